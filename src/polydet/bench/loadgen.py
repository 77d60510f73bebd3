"""A REST load generator that costs the server little CPU: ``concurrency`` keep-alive connections driven by
one thread through ``selectors``.

On a machine whose cores the server shares with its clients (the 2-core machines of BENCHMARKS.md), every
millisecond of CPU a client spends is taken from the server. ``common.closed_loop`` over ``rest_caller``
runs one Python thread per client, which hand the GIL to each other and wake up once per request;
here one thread sends pre-built requests and reads the answers of all connections as they come. Same
closed loop, same requests (``rest_caller``'s bodies, headers and image order), same checks of each answer
and same result keys as ``closed_loop(..., by_completion=True, keep_calls=True)``.
"""

from __future__ import annotations

import selectors
import socket
import statistics
import time
from urllib.parse import urlsplit

from .common import _answered, image_index, images_from, percentiles, rest_body


class _Conn:
    def __init__(self, thread: int, address):
        self.thread, self.address, self.seq, self.t0 = thread, address, 0, 0.0
        self.out, self.buf, self.sock = memoryview(b""), bytearray(), None

    def connect(self):
        self.sock = socket.create_connection(self.address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.buf.clear()


def _request(host: str, path: str, token: str | None, images: list[bytes]) -> bytes:
    body, ctype = rest_body(images)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _answer(buf: bytearray) -> tuple[int, bytes, int, bool] | None:
    """(status, body, bytes used, whether the server closes the connection) of the first complete HTTP/1.1
    answer in ``buf``, or None while incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    if "content-length" not in fields:
        raise ValueError(f"answer without Content-Length: {head[:3]}")
    size = int(fields["content-length"])
    if len(buf) < end + 4 + size:
        return None
    close = fields.get("connection", "").lower() == "close"
    return int(head[0].split()[1]), bytes(buf[end + 4:end + 4 + size]), end + 4 + size, close


class _Loop:
    """The connections' state and what each event does to it (``rest_event_loop`` runs it)."""

    def __init__(self, url: str, token: str | None, jpegs: list[bytes], concurrency: int, seconds: float,
                 warmup_s: float, model: str, per_request: int):
        u = urlsplit(url)
        self.host, self.path, self.token, self.jpegs, self.per_request = u.netloc, f"/predictions/{model}", token, \
            jpegs, per_request
        self.requests: dict[int, bytes] = {}  # first image -> the whole request, built once
        self.conns = [_Conn(i, (u.hostname, u.port)) for i in range(concurrency)]
        self.sel = selectors.DefaultSelector()
        self.lat, self.calls, self.reasons = [], [], {}
        self.t_count = time.perf_counter() + warmup_s
        self.t_end = self.t_count + seconds

    def start(self, c: _Conn) -> None:
        """Send ``c``'s next request, or close it once the window is over."""
        if time.perf_counter() >= self.t_end:
            self.sel.unregister(c.sock)
            c.sock.close()
            return
        n = len(self.jpegs)
        first = image_index(c.thread, c.seq, n, self.per_request)
        if first not in self.requests:
            self.requests[first] = _request(self.host, self.path, self.token,
                                            images_from(self.jpegs, first, self.per_request))
        c.out, c.t0 = memoryview(self.requests[first]), time.perf_counter()
        self.sel.modify(c.sock, selectors.EVENT_WRITE, c)

    def done(self, c: _Conn, why: str | None) -> None:
        t1 = time.perf_counter()
        if self.t_count <= t1 <= self.t_end:
            if why is None:
                self.lat.append(t1 - c.t0)
                self.calls.append((c.thread, c.seq, t1 - c.t0))
            else:
                self.reasons[why] = self.reasons.get(why, 0) + 1
        c.seq += 1

    def event(self, c: _Conn, events: int) -> None:
        close = False
        try:
            if events & selectors.EVENT_WRITE:
                c.out = c.out[c.sock.send(c.out):]
                if not c.out:
                    self.sel.modify(c.sock, selectors.EVENT_READ, c)
                return
            data = c.sock.recv(1 << 16)
            if not data:
                raise ConnectionResetError("closed by the server")
            c.buf += data
            got = _answer(c.buf)
            if got is None:
                return
            status, body, used, close = got
            del c.buf[:used]
            self.done(c, _answered(body, self.per_request) if status == 200 else f"HTTP {status}: {body[:100]!r}")
        except (OSError, ValueError) as e:
            self.done(c, type(e).__name__)
            close = True
        if close:  # a new connection for the next request
            self.sel.unregister(c.sock)
            c.sock.close()
            c.connect()
            self.sel.register(c.sock, selectors.EVENT_WRITE, c)
        self.start(c)


def rest_event_loop(url: str, token: str | None, jpegs: list[bytes], concurrency: int, seconds: float,
                    warmup_s: float = 1.0, model: str = "polydet", per_request: int = 1) -> dict:
    """``concurrency`` closed-loop clients POSTing ``per_request`` images per request for ``seconds`` after
    ``warmup_s``; calls that end inside the window count (by completion). Returns closed_loop's keys."""
    loop = _Loop(url, token, jpegs, concurrency, seconds, warmup_s, model, per_request)
    for c in loop.conns:
        c.connect()
        loop.sel.register(c.sock, selectors.EVENT_WRITE, c)
        loop.start(c)
    while loop.sel.get_map():
        if time.perf_counter() > loop.t_end + 120:  # an answer that never came
            loop.reasons["no answer in 120 s"] = len(loop.sel.get_map())
            break
        for key, events in loop.sel.select(timeout=1.0):
            loop.event(key.data, events)
    for key in list(loop.sel.get_map().values()):
        key.data.sock.close()
    lat, reasons = loop.lat, loop.reasons
    return {"requests": len(lat), "failures": sum(reasons.values()), "req_per_s": len(lat) / seconds,
            "failure_reasons": "; ".join(f"{v}x {k}" for k, v in reasons.items())[:300],
            **percentiles(lat), "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan"),
            "calls": loop.calls}
