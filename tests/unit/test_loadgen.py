"""The event-loop REST load generator (polydet.bench.loadgen) against a stub HTTP/1.1 server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from polydet.bench.common import image_index
from polydet.bench.loadgen import rest_event_loop

POOL = [b"A" * 10, b"B" * 20, b"C" * 30]  # the stub tells the images apart by their length


class _Stub(BaseHTTPRequestHandler):
    """200 with one contract object (or {"results": [...]} for a multipart form), 503 for the 30-byte image,
    200 with something else for a 40-byte one, and "Connection: close" on every third answer when ``closing``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    seen: list = []
    closing = False
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.seen.append((self.path, self.headers["Authorization"], self.headers["Content-Type"], len(body)))
            k = len(self.seen)
        if self.headers["Content-Type"].startswith("multipart/form-data"):
            code, out = 200, {"results": [{"detections": []}] * body.count(b"Content-Disposition")}
        elif len(body) == 30:
            code, out = 503, {"code": 503, "message": "busy"}
        elif len(body) == 40:
            code, out = 200, {"nope": True}
        else:
            code, out = 200, {"width": len(body), "height": 1, "detections": []}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.closing and k % 3 == 0:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    _Stub.seen, _Stub.closing = [], False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("closing", [False, True])
def test_closed_loop_counts_answers_failures_and_the_image_of_each_call(stub, closing):
    _Stub.closing = closing
    r = rest_event_loop(stub, "tok", POOL, concurrency=2, seconds=1.0, warmup_s=0.2)
    assert r["requests"] == len(r["calls"]) > 10 and r["req_per_s"] == r["requests"] / 1.0
    # every call of image 2 got a 503, every other call a good answer (a closed connection loses nothing)
    assert r["failures"] > 0 and set(r["failure_reasons"].split("x ", 1)[1:]) == {"HTTP 503: b'{\"code\": 503, "
                                                                                  "\"message\": \"busy\"}'"}
    assert {image_index(t, seq, len(POOL)) for t, seq, _ in r["calls"]} == {0, 1}
    for t in (0, 1):  # each client's calls in order, none skipped but image 2's
        seqs = [seq for tt, seq, _ in r["calls"] if tt == t]
        assert seqs == sorted(seqs) and all(image_index(t, s, 3) != 2 for s in seqs)
    assert all(0 < x < 1.0 for _, _, x in r["calls"]) and r["p50_ms"] > 0
    paths = {(p, auth, ctype) for p, auth, ctype, _ in _Stub.seen}
    assert paths == {("/predictions/polydet", "Bearer tok", "application/octet-stream")}


def test_several_images_per_request_go_as_one_multipart_form(stub):
    r = rest_event_loop(stub, None, POOL, concurrency=1, seconds=0.5, warmup_s=0.0, model="m", per_request=2)
    assert r["failures"] == 0 and r["requests"] > 3
    assert {p for p, _, _, _ in _Stub.seen} == {"/predictions/m"}
    assert {auth for _, auth, _, _ in _Stub.seen} == {None}


def test_an_answer_that_is_not_the_contract_is_a_failure(stub):
    r = rest_event_loop(stub, "tok", [b"D" * 40], concurrency=1, seconds=0.3, warmup_s=0.0)
    assert r["requests"] == 0 and r["failures"] > 0
    assert r["failure_reasons"].split("x ", 1)[1] == "no detections key: b'{\"nope\": true}'"
