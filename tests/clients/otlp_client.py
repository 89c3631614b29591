#!/usr/bin/env python3
"""A real OTLP client for the otlp source's tests: the OpenTelemetry Python SDK records metrics,
logs and spans, and its OTLP exporters (HTTP or gRPC) send them.

    otlp_client.py http http://127.0.0.1:4318 [TOKEN]
    otlp_client.py grpc http://127.0.0.1:4317 [TOKEN]

The SDK records into memory first, then each exporter's `export` is called once, so the exit
status says what the receiver answered: 0 when every export succeeded, 1 otherwise (with the
results printed). Needs `pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
opentelemetry-exporter-otlp-proto-grpc`.
"""
import logging
import sys

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

protocol, endpoint = sys.argv[1], sys.argv[2].rstrip("/")
headers = {"authorization": f"Bearer {sys.argv[3]}"} if len(sys.argv) > 3 else None
resource = Resource.create({"service.name": "door-controller", "site": "hq"})

# Metrics: a counter, a histogram with explicit buckets, and a gauge.
reader = InMemoryMetricReader()
meters = MeterProvider(
    resource=resource,
    metric_readers=[reader],
    views=[View(instrument_name="door_open_ms", aggregation=ExplicitBucketHistogramAggregation([10, 100]))],
)
meter = meters.get_meter("doors", "0.3")
swipes = meter.create_counter("badge_swipes", unit="{swipe}", description="badge swipes")
swipes.add(3, {"door": "d1"})
swipes.add(2, {"door": "d1"})
swipes.add(1, {"door": "d2"})
open_ms = meter.create_histogram("door_open_ms", unit="ms")
for ms in (5, 50, 500):
    open_ms.record(ms, {"door": "d1"})
meter.create_gauge("room_temp").set(21.5, {"room": "b1"})
metrics = reader.get_metrics_data()

# Spans: a server span with a failing child.
spans_memory = InMemorySpanExporter()
tracers = TracerProvider(resource=resource)
tracers.add_span_processor(SimpleSpanProcessor(spans_memory))
tracer = tracers.get_tracer("doors", "0.3")
with tracer.start_as_current_span("POST /open", kind=SpanKind.SERVER, attributes={"door": "d1"}):
    with tracer.start_as_current_span("unlock") as child:
        child.add_event("retry", {"attempt": 2})
        child.set_status(Status(StatusCode.ERROR, "actuator timeout"))
spans = spans_memory.get_finished_spans()

# Logs: through Python's logging, as an application logs.
logs_memory = InMemoryLogRecordExporter()
loggers = LoggerProvider(resource=resource)
loggers.add_log_record_processor(SimpleLogRecordProcessor(logs_memory))
log = logging.getLogger("doors")
log.propagate = False
log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=loggers))
log.setLevel(logging.INFO)
log.warning("door %s forced open", "d3", extra={"door": "d3"})
log.info("door d1 closed")
logs = logs_memory.get_finished_logs()

if protocol == "http":
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporters = [
        (OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", headers=headers), metrics),
        (OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers), spans),
        (OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", headers=headers), logs),
    ]
else:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporters = [
        (OTLPMetricExporter(endpoint=endpoint, insecure=True, headers=headers), metrics),
        (OTLPSpanExporter(endpoint=endpoint, insecure=True, headers=headers), spans),
        (OTLPLogExporter(endpoint=endpoint, insecure=True, headers=headers), logs),
    ]

failed = False
for exporter, data in exporters:
    result = exporter.export(data)
    print(type(exporter).__name__, result.name, flush=True)
    failed |= result.name != "SUCCESS"
sys.exit(1 if failed else 0)
