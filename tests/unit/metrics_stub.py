"""A /metrics endpoint on 127.0.0.1 for the tests of the benchmark probes (polydet.bench.serve.Sampler and
its users): a real HTTP server on a free port whose n-th GET answers ``page(n)``."""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def metrics_endpoint(page):
    """Yields (base URL, the paths asked so far); ``page(n)`` is the n-th answer's text, or None to close the
    connection without an answer (a failed scrape)."""
    served: list[str] = []

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            served.append(self.path)
            text = page(len(served))
            if text is None:
                self.close_connection = True
                return
            data = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()


def wait_for_scrapes(served: list, n: int, timeout: float = 10.0) -> None:
    """Until ``n`` pages were asked for (a probe whose sampler died never gets there: the test then fails)."""
    deadline = time.monotonic() + timeout
    while len(served) < n and time.monotonic() < deadline:
        time.sleep(0.01)
