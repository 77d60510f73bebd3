"""The KServe and Triton fronts' venvs, and starting/stopping them: ``polydet front kserve|triton ...``.

Runs in polydet's own environment; each front runs in its venv (``polydet.envs``) as
``python -m polydet.fronts.<name> --artifact A --http-port P --grpc-port Q ...`` and is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .. import envs

# What DetectionService.from_artifact imports on the serving path of a TorchScript or ONNX artifact, the
# same versions as polydet's own environment (requirements-pins.txt). torch: the CPU build, which pip's
# configuration provides as for the main venv (find-links, or --extra-index-url .../whl/cpu); an unpinned
# torch would pull a multi-GB CUDA build.
SERVING_DEPS = (
    "torch==2.13.0",
    "numba==0.68.0", "llvmlite==0.50.0",  # the NMS kernel, checked bit for bit on this pair
    "onnxruntime==1.32.0",  # ONNX artifacts
    "opencv-python-headless>=4.8", "pillow>=10.0", "pyyaml>=6.0",
)
# kserve 0.21.0: checked beside torch 2.13 (issue 15); it pins protobuf<7, psutil<6 and grpcio-tools, which
# would downgrade polydet's serving extra, hence its own venv.
KSERVE = envs.EnvSpec("kserve", ("kserve==0.21.0", *SERVING_DEPS))
# nvidia-pytriton 0.7.0 bundles tritonserver 2.51.0 and requires numpy<2 (polydet's venv has numpy 2).
# opencv-python-headless 4.12+ requires numpy>=2: capped so pip does not backtrack through its releases.
TRITON = envs.EnvSpec("pytriton", ("nvidia-pytriton==0.7.0", "numpy<2", *SERVING_DEPS[:-3],
                                   "opencv-python-headless>=4.8,<4.12", "pillow>=10.0", "pyyaml>=6.0"))
SPECS = {"kserve": KSERVE, "triton": TRITON}
FRONT_MODULE = "polydet.fronts.{}"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (bound at once so none is handed out twice)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Front:
    """A started front: its process (PID), ports and folder (log ``front.log``, TMPDIR ``tmp/``)."""

    name: str
    proc: subprocess.Popen
    run_dir: Path
    http_port: int
    grpc_port: int
    metrics_port: int | None = None
    host: str = "127.0.0.1"
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{_client_host(self.host)}:{self.grpc_port}"

    @property
    def log(self) -> Path:
        return self.run_dir / "front.log"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        return f"\n--- {self.log} (last {len(text)} lines) ---\n" + "\n".join(text)

    def wait_ready(self, model: str = "polydet", timeout: float = 300.0) -> float:
        """Wait until ``/v2/models/<model>/ready`` answers 200; seconds since start. Raises if the front exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.name} front exited with code {self.proc.returncode}{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/{model}/ready", timeout=5) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {self.name} front is not ready after {timeout:.0f} s{self.log_tail()}")
            time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM the front by PID, then SIGKILL it and every process it started that is left (PyTriton
        leaves tritonserver running on SIGTERM). Returns the PIDs that were running; idempotent."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=10)
        self.proc.wait(timeout=10)
        return [p.pid for p in procs]


def _client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)


def _ensure(spec: envs.EnvSpec, log, every: float = 30.0) -> None:
    """envs.ensure, saying every ``every`` seconds that pip is still at it (a first build takes minutes)."""
    import threading

    done = threading.Event()
    t0 = time.monotonic()

    def tick():
        while not done.wait(every):
            log(f"[polydet env {spec.name}] still installing ({time.monotonic() - t0:.0f} s)")
    if not envs.is_ready(spec):
        threading.Thread(target=tick, daemon=True).start()
    try:
        envs.ensure(spec, log=log)
    finally:
        done.set()


def start(name: str, artifact: str | Path, run_dir: str | Path, http_port: int, grpc_port: int,
          metrics_port: int | None = None, extra: tuple[str, ...] = (), host: str = "127.0.0.1",
          log=lambda m: print(m, file=sys.stderr)) -> Front:
    """Build the front's venv if needed, then start ``python -m polydet.fronts.<name>`` in it, in its own
    session (Ctrl-C in the caller's terminal does not reach it; ``Front.stop`` does) with TMPDIR in
    ``run_dir/tmp``."""
    run_dir = Path(run_dir).resolve()
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    args = ["-m", FRONT_MODULE.format(name), "--artifact", str(Path(artifact).resolve()), "--host", host,
            "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    _ensure(SPECS[name], log)
    env = dict(os.environ, TMPDIR=str(run_dir / "tmp"), PYTHONUNBUFFERED="1")
    with open(run_dir / "front.log", "ab") as out:
        proc = envs.popen(SPECS[name], args, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                          start_new_session=True)
    return Front(name, proc, run_dir, http_port, grpc_port, metrics_port, host)

# Default ports: each server's own defaults (KServe: 8080 REST, 8081 gRPC; Triton: 8000, 8001, 8002 metrics).
DEFAULT_PORTS = {"kserve": (8080, 8081, None), "triton": (8000, 8001, 8002)}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet front", description="serve polydet over the Open Inference "
                                "Protocol with KServe or Triton (PyTriton), each in its own venv (built once)",
                                epilog="Other options go to the front: --model-config Y (an archive's "
                                "model-config.yaml: thresholds, limits), --name N; triton: --max-batch-size, "
                                "--max-queue-delay-us. `kill PID` or Ctrl-C stops the front (tritonserver too).")
    p.add_argument("server", choices=sorted(SPECS))
    p.add_argument("--artifact", help="TorchScript/ONNX artifact or checkpoint (default: the bundled weights)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: loopback only)")
    p.add_argument("--http-port", type=int, help="v2 REST port (default: the server's, 8080 / 8000)")
    p.add_argument("--grpc-port", type=int, help="v2 gRPC port (default: the server's, 8081 / 8001)")
    p.add_argument("--metrics-port", type=int, help="triton: Prometheus metrics port (default 8002); "
                   "kserve serves /metrics on the REST port")
    p.add_argument("--run-dir", default="build/front", help="log (front.log) and TMPDIR (default %(default)s/NAME)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``polydet front kserve|triton [options] [front options]``: options this parser does not know go to the
    front itself (``--model-config``, ``--name``, ``--max-batch-size`` ...; see ``python -m polydet.fronts.X -h``)."""
    args, rest = make_parser().parse_known_args(argv)
    http, grpc, metrics = DEFAULT_PORTS[args.server]
    if args.artifact is None:
        from ..assets import path as asset

        args.artifact = str(asset("polydet_main_area.pt"))
    if args.server == "triton":
        metrics = args.metrics_port or metrics
    t0 = time.monotonic()
    front = start(args.server, args.artifact, Path(args.run_dir) / args.server, args.http_port or http,
                  args.grpc_port or grpc, metrics, tuple(rest), args.host)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill PID` of this command stops the front too
    try:
        front.wait_ready()
        print(f"polydet {args.server} front ready after {time.monotonic() - t0:.1f} s: REST {front.url}, gRPC "
              f"{front.grpc_target}" + (f", metrics http://{front.host}:{metrics}/metrics" if metrics else
                                        f", metrics {front.url}/metrics")
              + f"; PID {front.pid}, log {front.log}. Ctrl-C stops it.", flush=True)
        return front.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        front.stop()
