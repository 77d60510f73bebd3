"""Slow-body probes (issue 17.2): connections that declare a large body, send most of it and stall.

Shared by tests/reliability/test_proxy.py and benchmarks/soak.py (``--probes``). A probe may come from its
own loopback address (``source``, e.g. 127.0.0.2) so that nginx's per-client connection limit, which it is
meant to exhaust, is not the limit of the well-behaved clients on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
import time

MIB = 1 << 20
DECLARED = 16 * MIB  # each probe connection declares a body of max_request_size ...
SENT = 15 * MIB  # ... sends 15 MiB of it and stalls (1 MiB sent grew TorchServe's RSS by only ~0.6 MiB each)


def stall(port: int, n: int, token: str | None = None, source: str | None = None) -> list[socket.socket]:
    """``n`` connections that each declare DECLARED bytes, send SENT of them and stop sending."""
    head = (f"POST /predictions/polydet HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {DECLARED}\r\n" + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n")
    chunk = b"\0" * SENT
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5,
                                     source_address=(source, 0) if source else None)
        try:
            s.sendall(head.encode() + chunk)
        except OSError:  # the server answered and closed (401, 503) while we were sending
            pass
        socks.append(s)
    return socks


def answers(socks: list[socket.socket], within: float) -> list[tuple[str, float]]:
    """Each connection's status code ("" when closed without one, "open" if still open) and when it ended."""
    t0, out = time.monotonic(), []
    for s in socks:
        data, status = b"", "open"
        while True:
            s.settimeout(max(0.01, t0 + within - time.monotonic()))
            try:
                got = s.recv(65536)
            except TimeoutError:
                break
            except OSError:
                got = b""
            if not got:
                status = data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else ""
                break
            data += got
        out.append((status, time.monotonic() - t0))
        s.close()
    return out


class SlowBodyProber(threading.Thread):
    """Rounds of ``n`` stalled connections with ``token`` and ``n`` without, every ``every_s`` seconds, until
    ``stop()``; each round waits up to ``within_s`` for the server to end them. ``statuses`` counts how each
    connection ended ("401", "503", "" closed without an answer, "open" never closed)."""

    def __init__(self, port: int, token: str | None, n: int = 8, every_s: float = 5.0, within_s: float = 20.0,
                 source: str = "127.0.0.2"):
        super().__init__(daemon=True)
        self.port, self.token, self.n, self.every_s, self.within_s, self.source = port, token, n, every_s, within_s, source
        self.rounds = 0
        self.statuses: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                socks = stall(self.port, self.n, self.token, self.source) + stall(self.port, self.n, None, self.source)
                for status, _ in answers(socks, self.within_s):
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                self.rounds += 1
            except OSError as e:  # a refused connect is a finding too: record it, keep probing
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop_event.wait(self.every_s)

    def stop(self, timeout: float = 60.0) -> None:
        self._stop_event.set()
        self.join(timeout)
