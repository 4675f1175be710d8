"""A third-party-style service for Faultline's local mode: instrumented only
with the official OpenTelemetry Python SDK, nothing of Faultline's.

usage: sdk_service.py api|db|load LISTEN [SECONDS]

  api   answers GET / by calling db (at $DB_ADDR, Faultline's proxy) and
        records one SERVER span per request, covering the call;
  db    answers GET / after 200 ms (no telemetry);
  load  GETs api (at $API_ADDR) 20 times a second for SECONDS, then idles
        (so the run, not this process, decides when it ends); it listens
        on LISTEN only so local mode sees it start.

The SDK reads OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME, which
local mode sets.
"""

import os
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve(listen, handler):
    host, port = listen.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), handler).serve_forever()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=b"ok"):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def api(listen):
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(insecure=True), schedule_delay_millis=200)
    )
    tracer = provider.get_tracer("sdk-service")
    db = "http://" + os.environ["DB_ADDR"] + "/"

    class Handler(Quiet):
        def do_GET(self):
            with tracer.start_as_current_span("GET /", kind=SpanKind.SERVER) as span:
                try:
                    with urllib.request.urlopen(db, timeout=5) as r:
                        r.read()
                    status = 200
                except Exception as e:  # a failed call is a failed request
                    span.set_status(Status(StatusCode.ERROR, str(e)))
                    status = 502
                span.set_attribute("http.response.status_code", status)
            self.answer(status)

    serve(listen, Handler)


def db(listen):
    class Handler(Quiet):
        def do_GET(self):
            time.sleep(0.2)
            self.answer(200)

    serve(listen, Handler)


def load(listen, seconds):
    import threading

    class Handler(Quiet):
        def do_GET(self):
            self.answer(200)

    # Listening first: local mode waits for the port before going on.
    threading.Thread(target=serve, args=(listen, Handler), daemon=True).start()
    target = "http://" + os.environ["API_ADDR"] + "/"

    def one():
        try:
            with urllib.request.urlopen(target, timeout=5) as r:
                r.read()
        except Exception:
            pass

    # 20 requests a second, each on its own thread, for a bounded time.
    time.sleep(1)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        threading.Thread(target=one, daemon=True).start()
        time.sleep(0.05)
    while True:
        time.sleep(60)


def main():
    role, listen = sys.argv[1], sys.argv[2]
    if role == "api":
        api(listen)
    elif role == "db":
        db(listen)
    else:
        load(listen, float(sys.argv[3]))


main()
