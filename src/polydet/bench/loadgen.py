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

from .common import _answered, image_index, multipart_body, percentiles


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
    body, ctype = (images[0], "application/octet-stream") if len(images) == 1 else multipart_body(images)
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


def rest_event_loop(url: str, token: str | None, jpegs: list[bytes], concurrency: int, seconds: float,
                    warmup_s: float = 1.0, model: str = "polydet", per_request: int = 1) -> dict:
    """``concurrency`` closed-loop clients POSTing ``per_request`` images per request for ``seconds`` after
    ``warmup_s``; calls that end inside the window count (by completion). Returns closed_loop's keys."""
    u = urlsplit(url)
    path, n = f"/predictions/{model}", len(jpegs)
    requests = {}  # first image -> the whole request, built once
    conns = [_Conn(i, (u.hostname, u.port)) for i in range(concurrency)]
    sel = selectors.DefaultSelector()
    lat, calls, reasons = [], [], {}
    t_count = time.perf_counter() + warmup_s
    t_end = t_count + seconds

    def start(c: _Conn) -> None:
        if time.perf_counter() >= t_end:
            sel.unregister(c.sock)
            c.sock.close()
            return
        first = image_index(c.thread, c.seq, n, per_request)
        if first not in requests:
            requests[first] = _request(u.netloc, path, token, [jpegs[(first + j) % n] for j in range(per_request)])
        c.out, c.t0 = memoryview(requests[first]), time.perf_counter()
        sel.modify(c.sock, selectors.EVENT_WRITE, c)

    def done(c: _Conn, why: str | None) -> None:
        t1 = time.perf_counter()
        if t_count <= t1 <= t_end:
            if why is None:
                lat.append(t1 - c.t0)
                calls.append((c.thread, c.seq, t1 - c.t0))
            else:
                reasons[why] = reasons.get(why, 0) + 1
        c.seq += 1

    for c in conns:
        c.connect()
        sel.register(c.sock, selectors.EVENT_WRITE, c)
        start(c)
    while sel.get_map():
        if time.perf_counter() > t_end + 120:  # an answer that never came
            reasons["no answer in 120 s"] = len(sel.get_map())
            break
        for key, events in sel.select(timeout=1.0):
            c = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    c.out = c.out[c.sock.send(c.out):]
                    if not c.out:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                data = c.sock.recv(1 << 16)
                if not data:
                    raise ConnectionResetError("closed by the server")
                c.buf += data
                got = _answer(c.buf)
                if got is None:
                    continue
                status, body, used, close = got
                del c.buf[:used]
                done(c, _answered(body, per_request) if status == 200 else f"HTTP {status}: {body[:100]!r}")
            except (OSError, ValueError) as e:
                done(c, type(e).__name__)
                close = True
            if close:  # a new connection for the next request
                sel.unregister(c.sock)
                c.sock.close()
                c.connect()
                sel.register(c.sock, selectors.EVENT_WRITE, c)
            start(c)
    for c in list(sel.get_map().values()):
        c.data.sock.close()
    return {"requests": len(lat), "failures": sum(reasons.values()), "req_per_s": len(lat) / seconds,
            "failure_reasons": "; ".join(f"{v}x {k}" for k, v in reasons.items())[:300],
            **percentiles(lat), "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan"), "calls": calls}
