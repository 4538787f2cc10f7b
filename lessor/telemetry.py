"""OpenTelemetry: spans per attempt (worker) and per submit (client), lease metrics.

Off by default. Then the worker makes no span objects at all (``active_tracer()``
is None): even the API's no-op spans cost about 6 % of a no-op action's worker
CPU (profiled), and the metrics' no-op instruments are called once per batch. ``setup("console")``
installs the SDK with console exporters; ``setup("otlp")`` uses the OTLP exporter
when ``opentelemetry-exporter-otlp`` is installed (and says so when it is not);
``setup("memory")`` keeps everything in memory (benchmarks and tests read it back).

Metrics (all prefixed ``lessor.``): renewals, renewal.latency (ms), lease.expirations,
failovers, reports.refused, reports.unconfirmed, queue.depth, reaper.lag (ms),
reaper.call (ms, server CPU time of one reap.lua call), store.outages, store.outage (ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace

from lessor.errors import ConfigError

MODES = ("console", "otlp", "memory")


@dataclass
class Instruments:
    """The instruments lessor records into (no-ops until ``setup``)."""

    tracer: Any
    renewals: Any
    renewal_latency_ms: Any
    lease_expirations: Any
    failovers: Any
    refused_reports: Any
    queue_depth: Any
    reaper_lag_ms: Any
    reap_call_ms: Any
    store_outages: Any
    store_outage_ms: Any
    unconfirmed_reports: Any


def _instruments() -> Instruments:
    meter = metrics.get_meter("lessor")
    return Instruments(
        tracer=trace.get_tracer("lessor"),
        renewals=meter.create_counter("lessor.renewals", description="leases renewed"),
        renewal_latency_ms=meter.create_histogram("lessor.renewal.latency", unit="ms",
                                                  description="batched renewal call latency"),
        lease_expirations=meter.create_counter("lessor.lease.expirations", description="leases reaped"),
        failovers=meter.create_counter("lessor.failovers", description="expired actions requeued"),
        refused_reports=meter.create_counter("lessor.reports.refused", description="stale reports refused"),
        # Summed over every process: +1 per submit or requeue, -1 per lease granted.
        queue_depth=meter.create_up_down_counter("lessor.queue.depth", description="queued actions"),
        reaper_lag_ms=meter.create_histogram("lessor.reaper.lag", unit="ms",
                                             description="how late past expiry a lease was reaped"),
        reap_call_ms=meter.create_histogram("lessor.reaper.call", unit="ms",
                                            description="server CPU time of one reap.lua call, as the script "
                                                        "timed it (the server serves nothing else meanwhile)"),
        store_outages=meter.create_counter("lessor.store.outages",
                                           description="times a process lost its server (one per outage)"),
        store_outage_ms=meter.create_histogram("lessor.store.outage", unit="ms",
                                               description="how long the server was unreachable, per outage"),
        unconfirmed_reports=meter.create_counter(
            "lessor.reports.unconfirmed",
            description="reports that got no answer before the lease's self-fence deadline"),
    )


_current = _instruments()


def instruments() -> Instruments:
    """The instruments in force (no-op ones unless ``setup`` was called)."""
    return _current


def active_tracer() -> Any:
    """The tracer while spans go anywhere; None when tracing is off, so the hot path skips them.

    On when ``setup`` installed a provider, or when the application installed its own
    (``trace.set_tracer_provider``): lessor's tracer delegates to whichever it is.
    """
    if isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return _current.tracer


def setup(mode: str | None, *, export_interval_ms: int = 5000) -> Instruments:
    """Turn telemetry on (``console`` or ``otlp``); ``None`` leaves it off."""
    global _current
    if mode is None:
        return _current
    if mode not in MODES:
        raise ConfigError(f"--otel must be one of {', '.join(MODES)}, got {mode!r}")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": "lessor"})
    tracer_provider = TracerProvider(resource=resource)
    if mode == "memory":
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        global memory_reader, memory_spans
        memory_reader, memory_spans = InMemoryMetricReader(), InMemorySpanExporter()
        tracer_provider.add_span_processor(SimpleSpanProcessor(memory_spans))
        reader = memory_reader
    else:
        span_exporter, metric_exporter = _exporters(mode)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=export_interval_ms)
    # Providers can be set once per process (OpenTelemetry's rule); a second
    # setup keeps the first ones.
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    _current = _instruments()
    return _current


memory_reader = None
memory_spans = None


def _exporters(mode: str):
    if mode == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(), ConsoleMetricExporter()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError("--otel otlp needs `pip install opentelemetry-exporter-otlp`") from None
    return OTLPSpanExporter(), OTLPMetricExporter()
