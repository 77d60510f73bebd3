"""Helpers of the reliability tests: start a TorchServe, read its workers, drive traffic at it."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving_helpers import REPO, auth


def start_server(tmp_path_factory, store: Path, properties: dict | None = None, models: str = "polydet.mar",
                 store_guard: bool = True):
    """The repository's config on free ports; ``store_guard=False`` only for the controls that show the
    holes the guard closes."""
    from polydet.serving.server import Ports, TorchServe

    ts = TorchServe(tmp_path_factory.mktemp("ts"), REPO / "config.properties", ports=Ports.free(),
                    model_store=store, models=models, properties=properties, store_guard=store_guard)
    ts.start()
    try:
        if models:
            ts.wait_ready("polydet", timeout=240)
    except BaseException:
        ts.stop()
        raise
    print(f"\nTorchServe pid {ts.pid} ({properties or 'repository config'}): READY "
          f"{ts.ready_seconds or 0:.1f} s after start", file=sys.stderr)
    return ts


def describe(ts, model: str = "polydet", version: str | None = None) -> list[dict]:
    import requests

    url = f"{ts.management_url}/models/{model}" + (f"/{version}" if version else "")
    r = requests.get(url, headers=auth(ts.tokens.management), timeout=30)
    r.raise_for_status()
    return r.json()


def workers(ts, model: str = "polydet") -> list[dict]:
    """The workers of ``model``'s default version (pid, status...), by pid."""
    return sorted(describe(ts, model)[0]["workers"], key=lambda w: w["pid"])


def worker(ts, model: str = "polydet") -> dict:
    """The only worker of ``model``'s default version."""
    (w,) = workers(ts, model)
    return w


def wait_workers(ts, n: int, gone: set[int] = frozenset(), timeout: float = 120.0,
                 model: str = "polydet") -> list[dict]:
    """Wait until ``n`` workers of ``model`` are READY and none of them has a pid in ``gone``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ws = workers(ts, model)
            if len(ws) == n and all(w["status"] == "READY" and w["pid"] not in gone for w in ws):
                return ws
        except Exception:  # noqa: BLE001 - the model may be between workers
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not {n} new READY workers after {timeout} s")
        time.sleep(0.2)


@dataclass
class Outcome:
    start: float
    end: float
    status: int | str  # HTTP status, or the exception's name
    body: str = ""  # the start of a failed answer


@dataclass
class Traffic:
    """A bounded threaded client: ``threads`` threads post ``body`` until stopped (or ``max_requests``)."""

    url: str
    token: str
    body: bytes
    threads: int = 4
    max_requests: int = 5000
    timeout: float = 60.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def _run(self):
        import requests

        s = requests.Session()
        headers = {**auth(self.token), "Content-Type": "application/octet-stream"}
        while not self._stop.is_set():
            with self._lock:
                if len(self.outcomes) >= self.max_requests:
                    return
            t0 = time.monotonic()
            try:
                r = s.post(self.url, data=self.body, headers=headers, timeout=self.timeout)
                status, body = r.status_code, ("" if r.ok else r.text[:300])
            except requests.RequestException as e:
                status, body = type(e).__name__, str(e)[:300]
            with self._lock:
                self.outcomes.append(Outcome(t0, time.monotonic(), status, body))

    def __enter__(self) -> "Traffic":
        for t in self._pool:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._pool:
            t.join(timeout=self.timeout + 10)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` more requests have been answered."""
        target = len(self.snapshot()) + n
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"traffic stalled: {len(self.snapshot())} of {target} answers in {timeout} s")
            time.sleep(0.05)
