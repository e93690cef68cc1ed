"""The service's exception tree; each class knows its gRPC status code.

Stages and adapters raise these (translating library exceptions with `raise ... from exc`); one
interceptor (`gateway.interceptors`) turns them into `abort(code, details)`. Anything else is a
bug and becomes INTERNAL with a generic message.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base class: an error the client should see, with its status code and message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """Malformed request, bad id, a value out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(ServiceError):
    """A named resource (e.g. an experiment) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(ServiceError):
    """Missing or wrong credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ServiceError):
    """Not ready yet, draining, or no fallback left."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The request's deadline ran out before the work was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(ServiceError):
    """Load shedding: too many requests in flight."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
