"""The gateway's link to the coordinator: deadlines, reconnecting, and saying why a
link could not be made.

* :class:`Backoff`: exponential backoff with full jitter, bounded (the delay before
  attempt n is uniform in [0, min(maximum, initial * 2**n)]), so many vendors that
  lost one coordinator do not all come back in the same second.
* :class:`Watchdog`: once a round has started, the gateway waits for the
  coordinator no longer than the round's ``deadline_unix`` plus a grace; then it
  cancels the stream (a killed or black-holed link would otherwise hold it forever).
* :func:`diagnose`: when gRPC reports only "unavailable", a plain TLS handshake with
  the same certificates names the one reason (nothing listening, a coordinator
  certificate the pinned CA does not sign, the coordinator refusing this party's
  certificate, this party's certificate expired).
* :func:`tls13_refusal`: before each dial, one TLS handshake that accepts nothing
  below TLS 1.3 (gRPC's Python API cannot set a minimum version); a coordinator that
  cannot do 1.3 is refused (docs/cross-silo.md says why that covers the gRPC link).
"""
from __future__ import annotations

import datetime
import random
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Callable, Optional

__all__ = ["Backoff", "Watchdog", "diagnose", "tls13_refusal", "RETRYABLE",
           "certificate_expiry_problem"]

# gRPC status codes after which a gateway with --reconnect dials again: the link or
# the coordinator went away. Others (the coordinator refused this party) are final.
RETRYABLE = frozenset({"UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN", "ABORTED",
                       "RESOURCE_EXHAUSTED"})


class Backoff:
    """Exponential backoff with full jitter: ``next()`` returns the delay to wait."""

    def __init__(self, *, initial: float = 0.5, maximum: float = 30.0,
                 rng: Optional[random.Random] = None) -> None:
        if not (0 < initial <= maximum):
            raise ValueError(f"backoff: need 0 < initial ({initial}) <= maximum ({maximum})")
        self.initial, self.maximum = initial, maximum
        self._rng = rng if rng is not None else random.Random()
        self.attempt = 0

    def ceiling(self) -> float:
        """The largest delay the next attempt may draw."""
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 60))

    def next(self) -> float:
        delay = self._rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """After a link that worked: the next failure starts from `initial` again."""
        self.attempt = 0


class Watchdog:
    """Calls `fire` once, when the armed wall-clock time passes (unless disarmed).

    A daemon thread; :meth:`arm` moves the time, :meth:`disarm` clears it,
    :meth:`stop` ends the thread.
    """

    def __init__(self, fire: Callable[[], None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._fire, self._clock = fire, clock
        self._cond = threading.Condition()
        self._at: Optional[float] = None
        self._stopped = False
        self.fired = False
        self._thread = threading.Thread(target=self._loop, name="silo-watchdog", daemon=True)
        self._thread.start()

    def arm(self, at_unix: float) -> None:
        with self._cond:
            self._at = at_unix
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._at = None
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._at is None:
                    self._cond.wait()
                    continue
                left = self._at - self._clock()
                if left > 0:
                    self._cond.wait(timeout=min(left, 1.0))
                    continue
                self._at, self.fired = None, True
                self._cond.release()
                try:
                    self._fire()
                finally:
                    self._cond.acquire()


def certificate_expiry_problem(cert_pem: bytes, now: datetime.datetime) -> str:
    """'' when the certificate is valid at `now`, else one line saying why not."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return f"this party's certificate is not valid before {start:%Y-%m-%d %H:%M} UTC"
    if now > end:
        return (f"this party's certificate expired on {end:%Y-%m-%d %H:%M} UTC; issue a new "
                "one (`fedcollab certs issue --party`)")
    return ""


_ALERTS = {
    "UNKNOWN_CA": "the coordinator does not trust the CA of this party's certificate",
    "CERTIFICATE_EXPIRED": "the coordinator refused this party's certificate as expired",
    "CERTIFICATE_REQUIRED": "the coordinator requires a client certificate",
    "BAD_CERTIFICATE": "the coordinator refused this party's certificate",
    "CERTIFICATE_UNKNOWN": "the coordinator refused this party's certificate",
    "HANDSHAKE_FAILURE": "the TLS handshake failed (no common protocol or cipher)",
}


def _alert_words(err: ssl.SSLError) -> str:
    reason = str(getattr(err, "reason", "") or err)
    for key, words in _ALERTS.items():
        if key in reason.upper():
            return f"{words} (TLS alert {reason.lower()})"
    return f"the TLS handshake failed ({reason})"


def _not_from(cert: Path, ca: Path) -> str:
    """' (it is not signed by --coordinator-ca ...)' when that is so, else ''."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(Path(ca).read_bytes()))
    except Exception:  # noqa: BLE001 - any failure to verify is the answer
        return (" (it is not signed by --coordinator-ca; is it from the CA the coordinator "
                "trusts for parties?)")
    return ""


def diagnose(address: str, *, coordinator_ca: Path, cert: Path, key: Path,
             server_name: Optional[str] = None, timeout: float = 5.0) -> str:
    """One line naming why a mutual-TLS link to `address` cannot be made (or what
    does work, when the handshake succeeds and the failure is above TLS).
    `server_name`: the name the coordinator's certificate must carry (default: the
    address's host, as gRPC checks it)."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "localhost"
    try:
        port = int(port_text)
    except ValueError:
        return f"{address!r} is not HOST:PORT"
    try:
        problem = certificate_expiry_problem(Path(cert).read_bytes(),
                                             datetime.datetime.now(datetime.timezone.utc))
    except (OSError, ValueError) as err:
        return f"cannot use --cert ({err.__class__.__name__})"
    if problem:
        return problem
    try:
        context = _client_context(cert, key, coordinator_ca, ssl.TLSVersion.TLSv1_2)
    except (OSError, ssl.SSLError) as err:
        return f"cannot load the certificates ({err.__class__.__name__}: {err})"
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return f"nothing listens at {address} (connection refused)"
    except socket.timeout:
        return f"no answer from {address} within {timeout:g} s"
    except OSError as err:
        return f"cannot reach {address} ({err.strerror or err})"
    try:
        with context.wrap_socket(raw, server_hostname=server_name or host) as tls:
            tls.settimeout(timeout)
            version = tls.version()
            try:
                first = tls.recv(1)  # TLS 1.3: the server's verdict on our certificate
            except socket.timeout:
                first = b"?"
            if not first:
                return ("the coordinator closed the connection once it saw this party's "
                        f"certificate: it does not accept it{_not_from(cert, coordinator_ca)}")
            return (f"a {version} handshake with {address} succeeds with these "
                    "certificates; the link failed above TLS")
    except ssl.SSLCertVerificationError as err:
        if server_name and "hostname mismatch" in str(err.verify_message).lower():
            return (f"the coordinator's certificate is not {server_name!r}'s "
                    f"(--coordinator-name): another party answers at {address}")
        return ("the coordinator's certificate does not verify against --coordinator-ca "
                f"({err.verify_message})")
    except ssl.SSLError as err:
        return _alert_words(err)
    except (ConnectionResetError, BrokenPipeError):
        return "the coordinator closed the connection during the TLS handshake"
    except OSError as err:
        return f"the TLS handshake with {address} failed ({err.__class__.__name__})"
    finally:
        raw.close()


#: OpenSSL's reasons for a handshake that found no common TLS version.
# (not WRONG_VERSION_NUMBER: a listener that speaks no TLS at all, which diagnose names)
_VERSION_REASONS = ("UNSUPPORTED_PROTOCOL", "PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE",
                    "VERSION_TOO_LOW")


def tls13_refusal(address: str, *, coordinator_ca: Path, cert: Path, key: Path,
                  server_name: Optional[str] = None, timeout: float = 5.0) -> str:
    """One line when the coordinator at ``address`` cannot do TLS 1.3, else ''.

    One handshake with ``ssl``'s ``minimum_version = TLSv1_3``, this party's certificate
    and key, the pinned CA and the name gRPC checks (``server_name``, default the
    address's host), before the gRPC channel dials. Any other failure (nothing
    listening, a certificate refused) is also '': gRPC's dial then fails and
    :func:`diagnose` names it, as before.
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "localhost"
    try:
        port = int(port_text)
    except ValueError:
        return ""
    try:
        context = _client_context(cert, key, coordinator_ca, ssl.TLSVersion.TLSv1_3)
        raw = socket.create_connection((host, port), timeout=timeout)
    except (OSError, ssl.SSLError):
        return ""
    try:
        with context.wrap_socket(raw, server_hostname=server_name or host) as tls:
            version = tls.version()
        if version == "TLSv1.3":
            return ""
        return _no_tls13(address, f"it negotiated {version}")
    except ssl.SSLError as err:
        reason = str(getattr(err, "reason", "") or err)
        if any(words in reason.upper() for words in _VERSION_REASONS):
            return _no_tls13(address, f"TLS alert {reason.lower()}")
        return ""
    except OSError:
        return ""
    finally:
        raw.close()


def _no_tls13(address: str, what: str) -> str:
    return (f"the coordinator at {address} cannot do TLS 1.3 ({what}); the gateway "
            "accepts no older TLS version, so it does not dial")


def _client_context(cert: str | Path, key: str | Path, coordinator_ca: str | Path,
                    minimum: ssl.TLSVersion) -> ssl.SSLContext:
    """The gateway's TLS client context as its gRPC channel uses it (h2, the pinned CA,
    its own certificate), at least ``minimum``.

    Raises:
        OSError, ssl.SSLError: A certificate, key or CA that cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = minimum
    context.set_alpn_protocols(["h2"])
    context.load_verify_locations(cafile=str(coordinator_ca))
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context
