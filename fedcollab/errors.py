"""The root of fedcollab's exception tree.

Every error a user can cause derives from :class:`FedcollabError`, so the CLI can
turn it into one clear line and a non-zero exit instead of a traceback.
"""
from __future__ import annotations

__all__ = ["FedcollabError"]


class FedcollabError(Exception):
    """Base class for errors that fedcollab reports to users as one line."""

    exit_code: int = 1
