"""Service errors and the one place where they meet gRPC status codes.

The server turns any :class:`~fedcollab.errors.FedcollabError` into a status with
:func:`status_code`; the client turns a status back into a :class:`ServiceError`
with :func:`from_rpc_error`, so the CLI prints one line and exits 1 or 2.
"""
from __future__ import annotations

from typing import Any

from fedcollab.errors import FedcollabError

__all__ = ["ServiceError", "InvalidArgument", "NotFound", "Unauthenticated",
           "PermissionDenied", "FailedPrecondition", "ResourceExhausted", "Unavailable",
           "status_code", "from_rpc_error"]


class ServiceError(FedcollabError):
    """A job-service call that failed; `code` is the gRPC status code's name."""

    code = "INTERNAL"


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"
    exit_code = 2


class NotFound(ServiceError):
    code = "NOT_FOUND"
    exit_code = 2


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"


class FailedPrecondition(ServiceError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    code = "UNAVAILABLE"


_BY_CODE: dict[str, type[ServiceError]] = {
    cls.code: cls for cls in (InvalidArgument, NotFound, Unauthenticated, PermissionDenied,
                              FailedPrecondition, ResourceExhausted, Unavailable)}


def status_code(err: BaseException) -> Any:
    """The grpc.StatusCode for an error raised while serving a call."""
    import grpc

    from fedcollab.spec import SpecError

    if isinstance(err, ServiceError):
        return getattr(grpc.StatusCode, err.code)
    if isinstance(err, SpecError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def from_rpc_error(err: Any, *, server: str = "") -> ServiceError:
    """A grpc.RpcError as a one-line ServiceError for the CLI."""
    code = err.code().name if hasattr(err, "code") else "UNKNOWN"
    details = (err.details() if hasattr(err, "details") else "") or ""
    if code == "UNAVAILABLE":
        where = f" at {server}" if server else ""
        return Unavailable(f"cannot reach the job service{where}: "
                           f"{details.splitlines()[0] if details else 'unavailable'}; "
                           "is `fedcollab serve` running there (and --ca-cert right for TLS)?")
    if code == "DEADLINE_EXCEEDED":
        return Unavailable(f"the job service{' at ' + server if server else ''} did not answer "
                           "in time")
    cls = _BY_CODE.get(code, ServiceError)
    return cls(details or code.lower().replace("_", " "))
