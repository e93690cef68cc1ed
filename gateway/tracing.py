"""Traces: the OpenTelemetry tracer provider and the per-stage span and timer.

- One span per request (opened by the interceptor, continuing the caller's W3C trace context
  from gRPC metadata) and one child span per pipeline stage, named after the stage.
- Spans are exported over OTLP only when `monitoring.tracing.enabled`; sampling is parent
  based with `sample_ratio` for new traces. The provider is injectable (tests use an
  in-memory exporter).
- Log lines carry the current trace and span ids (see `gateway.json_logging`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from gateway.config import MonitoringSettings

SERVICE_NAME = "recsys-gateway"


def build_tracer_provider(settings: MonitoringSettings) -> TracerProvider:
    """A provider sampling `tracing.sample_ratio` of new traces, exporting over OTLP when
    tracing is enabled (otherwise spans are created for context but never exported)."""
    tracing = settings.tracing
    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME}),
        sampler=ParentBased(TraceIdRatioBased(tracing.sample_ratio if tracing.enabled else 0.0)),
    )
    if tracing.enabled:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=tracing.otlp_endpoint, insecure=True))
        )
    return provider


class PipelineStage:
    """Times one pipeline stage (a `with` block) into the stage latency histogram and, when the
    request's trace is sampled, wraps it in a child span named after the stage.

    Unsampled requests (99% at the default ratio) get no stage spans: a non-recording span
    still costs about 18 us to open and close, more than some stages take. Their trace id is
    the request span's, so logs and Triton still carry it.
    """

    __slots__ = ("_observe", "_span", "_started")

    def __init__(self, observe: Callable[[float], None], tracer: trace.Tracer, name: str) -> None:
        self._observe = observe
        self._span = (
            tracer.start_as_current_span(name) if trace.get_current_span().is_recording() else None
        )
        self._started = 0.0

    def __enter__(self) -> None:
        if self._span is not None:
            self._span.__enter__()
        self._started = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._observe(time.perf_counter() - self._started)
        if self._span is not None:
            self._span.__exit__(kind, error, traceback)  # records the exception on the span
