"""The root of fedcollab's exception tree.

Every error a user can cause derives from :class:`FedcollabError`, so the CLI can
turn it into one clear line and a non-zero exit instead of a traceback.
"""
from __future__ import annotations

__all__ = ["CheckpointError", "FedcollabError", "Terminated", "raise_on_sigterm",
           "raises_on_sigterm"]


class FedcollabError(Exception):
    """Base class for errors that fedcollab reports to users as one line."""

    exit_code: int = 1


class CheckpointError(FedcollabError):
    """State that must be on disk before a round counts could not be written there (a
    worker's private layers: a full or read-only disk). The round is not committed:
    a resume, or a vendor that rejoins, starts from the last round that was."""


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a job service's cancel): the job ends as on Ctrl-C,
    its ``finally`` blocks stop the workers and Ray, its output directory stays
    resumable, and the CLI exits 128 + 15."""

    exit_code: int = 143


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by signal {signum}")


def raise_on_sigterm() -> bool:
    """From now on SIGTERM raises :class:`Terminated` in the main thread.

    Called again after ``ray.init``: Ray installs a native handler that printed a
    crash dump on SIGTERM and then a Python one that exits with code 15 from
    wherever the job was. Returns False (and changes nothing) outside the main thread.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _terminate)
    return True


def raises_on_sigterm() -> bool:
    """Whether :func:`raise_on_sigterm` is in force (the CLI asked for it)."""
    import signal

    return signal.getsignal(signal.SIGTERM) is _terminate
