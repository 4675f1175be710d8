"""Sends known spans to an OTLP endpoint with the official OpenTelemetry
Python SDK, so the observer is tested against an exporter someone else wrote.

usage: send_spans.py grpc|http ENDPOINT SERVICE

Sends, for SERVICE: 200 server spans of 1..200 ms (every 10th with status
ERROR); 30 client spans to peer.service=payments carrying circuit-breaker
attributes, of which the 21st carries a circuit_breaker.state_change event
closed -> open and the last 9 report state open.
"""

import sys
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def exporter(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def main():
    protocol, endpoint, service = sys.argv[1], sys.argv[2], sys.argv[3]
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter(protocol, endpoint)))
    tracer = provider.get_tracer("faultline-test")
    now = time.time_ns()
    for i in range(1, 201):
        span = tracer.start_span("GET /order", kind=SpanKind.SERVER, start_time=now - i * 1_000_000)
        if i % 10 == 0:
            span.set_status(Status(StatusCode.ERROR, "failed"))
        span.end(end_time=now)
    for i in range(1, 31):
        state = "open" if i > 21 else "closed"
        span = tracer.start_span(
            "POST /pay",
            kind=SpanKind.CLIENT,
            start_time=now - 5_000_000,
            attributes={
                "peer.service": "payments",
                "circuit_breaker.name": "payments",
                "circuit_breaker.state": state,
            },
        )
        if i == 21:
            span.add_event(
                "circuit_breaker.state_change",
                {
                    "circuit_breaker.name": "payments",
                    "circuit_breaker.state.from": "closed",
                    "circuit_breaker.state.to": "open",
                },
                timestamp=now,
            )
        if i > 20:
            span.set_status(Status(StatusCode.ERROR, "payments unavailable"))
        span.end(end_time=now)
    provider.shutdown()


if __name__ == "__main__":
    main()
