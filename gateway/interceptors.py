"""The one boundary that maps exceptions to gRPC status codes.

- `ServiceError` subclasses abort with their own code and message.
- A request body that does not parse as the method's message (e.g. invalid UTF-8 in a string
  field) is INVALID_ARGUMENT, not the INTERNAL gRPC would report by default.
- Anything else is a bug: INTERNAL with a generic message; the detail goes to the log.

Being the one place that sees every outcome, it also counts requests and their latency per
method and status code, and opens the request's span, continuing the caller's trace context
(W3C `traceparent` in the gRPC metadata).

It runs on every call, so it does the least it can: the metric children of each status code
are looked up once, only the metadata keys a guard or the propagator reads are kept, and with
tracing off a call that brings no trace context gets no span at all (an unsampled span still
cost ~5 us to open, attach and end, for a trace id nothing would ever export).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from gateway.errors import InvalidArgument, ServiceError
from gateway.prometheus_metrics import Metrics
from gateway.security import Guard

_log = logging.getLogger(__name__)


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler so that no exception escapes unmapped."""

    def __init__(
        self,
        metrics: Metrics,
        tracer: trace.Tracer,
        guards: Sequence[Guard] = (),
        trace_new_calls: bool = True,
    ) -> None:
        """`trace_new_calls`: False when tracing is off, so only calls continuing a caller's
        trace get a span."""
        self._metrics = metrics
        self._tracer = tracer
        self._guards = tuple(guards)
        self._trace_new_calls = trace_new_calls
        # Wrapped handlers by method path: handlers are fixed once the server starts, so each
        # is wrapped once instead of on every call.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        wrapped = self._wrapped.get(handler_call_details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler  # unknown methods are not cached: their names come from clients
        wrapped = self._wrap(handler, handler_call_details.method)
        self._wrapped[handler_call_details.method] = wrapped
        return wrapped

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        inner = handler.unary_unary
        parse = handler.request_deserializer
        assert inner is not None and parse is not None
        method_name = method.rsplit("/", 1)[-1]
        metrics = self._metrics
        tracer = self._tracer
        guards = self._guards
        trace_new_calls = self._trace_new_calls
        # Headers the configured propagator reads: without any of them there is nothing to
        # extract (most calls), and extraction is skipped.
        trace_headers = frozenset(propagate.get_global_textmap().fields)
        # The metadata anything here reads: the propagator's headers and the guards' (the token,
        # a trusted proxy's forwarded client address).
        wanted = trace_headers.union(*(guard.metadata_keys for guard in guards))
        recorders: dict[grpc.StatusCode, tuple[Callable[[], None], Callable[[float], None]]] = {}

        def record(code: grpc.StatusCode, seconds: float) -> None:
            """Counts the call and its latency; labelled children are looked up once per code."""
            pair = recorders.get(code)
            if pair is None:
                labels = (method_name, code.name)
                pair = recorders[code] = (
                    metrics.requests.labels(*labels).inc,
                    metrics.request_duration.labels(*labels).observe,
                )
            pair[0]()
            pair[1](seconds)

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except (DecodeError, UnicodeDecodeError, ValueError) as exc:
                return _Undecodable(str(exc))

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            carrier = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if key in wanted and isinstance(value, str)
            }
            if trace_headers.isdisjoint(carrier):
                if not trace_new_calls:
                    return await _handle(request, context, trace.INVALID_SPAN, carrier)
                parent = Context()  # a new trace
            else:
                parent = propagate.extract(carrier)
            span = tracer.start_span(method_name, context=parent, kind=trace.SpanKind.SERVER)
            with trace.use_span(
                span, end_on_exit=True, record_exception=False, set_status_on_exception=False
            ):
                return await _handle(request, context, span, carrier)

        async def _handle(
            request: Any,
            context: grpc.aio.ServicerContext[Any, Any],
            span: trace.Span,
            metadata: Mapping[str, str],
        ) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                for guard in guards:
                    guard.check(method, metadata, context.peer())
                if isinstance(request, _Undecodable):
                    raise InvalidArgument("request", f"is not a valid message: {request.error}")
                return await inner(request, context)  # type: ignore[arg-type]  # aio handler
            except ServiceError as exc:
                code = exc.code
                span.set_attribute("recsys.error", exc.message)
                _log.warning(
                    "%s refused", method_name, extra={"code": code.name, "details": exc.message}
                )
                if context.cancelled():
                    # The client gave up (its deadline passed): nobody is left to tell.
                    code = grpc.StatusCode.CANCELLED
                    return None
                await context.abort(exc.code, exc.message)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR)
                _log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                record(code, time.perf_counter() - started)
                span.set_attribute("rpc.grpc.status_code", code.value[0])

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
