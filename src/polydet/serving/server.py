"""Start, wait for and stop one TorchServe 0.12.0, knowing its PID.

``TorchServe`` writes the effective config.properties (ports, absolute paths) from a template, runs
``torchserve --start --ncs --foreground`` with its own TMPDIR (pid file, worker sockets, extracted
archives) and start folder (logs/, key_file.json), waits until a model's worker is READY through the
management API (``/ping`` says Healthy before any model is loaded), reads the tokens from key_file.json
and stops the Java frontend and its workers by PID. Two instances on one host do not collide as long as
their ports and folders differ.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError, PolydetError
from .properties import (Ports, default_config, effective_properties, read_properties,  # noqa: F401 - re-exported
                         resolve_paths, write_properties)

JAVA_MAIN = "org.pytorch.serve.ModelServer"
STATE_FILE = "polydet-serve.json"  # written into <start folder>/logs/ by `polydet serve`, read by `polydet stop`


class ServerError(PolydetError):
    """TorchServe did not start, its model never became READY, or it could not be stopped."""


@dataclass(frozen=True)
class Tokens:
    """The keys of one TorchServe start (key_file.json). ``api`` only rotates the other two."""

    inference: str
    management: str
    api: str = ""

    @classmethod
    def read(cls, key_file: str | Path, timeout: float = 10.0) -> "Tokens":
        """Read key_file.json, waiting while it is missing or empty (it is written just after start)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                d = json.loads(Path(key_file).read_text())
                return cls(d["inference"]["key"], d["management"]["key"], d.get("API", {}).get("key", ""))
            except (OSError, ValueError, KeyError, TypeError) as e:
                if time.monotonic() > deadline:
                    raise ServerError(f"cannot read TorchServe tokens from {key_file}: {e}") from e
                time.sleep(0.1)


def torchserve_command() -> list[str]:
    """``torchserve`` run by this interpreter: its workers then run this Python too (TorchServe starts them
    with its launcher's ``sys.executable``), whatever is on PATH."""
    import importlib.util

    if importlib.util.find_spec("ts") is None:
        raise ServerError("torchserve is not installed: pip install 'polydet[serve]'")
    return [sys.executable, "-m", "ts.model_server"]


def missing_prerequisite() -> str | None:
    """Why TorchServe cannot start on this machine (no torchserve, no Java), or None: a skip reason."""
    try:
        torchserve_command()
    except ServerError as e:
        return str(e)
    if not shutil.which("java"):
        return "java is not installed (TorchServe's frontend needs Java 17+)"
    return None


class TorchServe:
    """One TorchServe instance.

    run_dir: start folder (logs/, key_file.json) and, by default, home of TMPDIR (``run_dir/tmp``).
    config: template config.properties (default: polydet's own); see :func:`effective_properties`.
    ports / model_store / models: override the template (``models`` -> load_models, e.g. "polydet.mar").
    properties: any further key overrides (e.g. {"allowed_urls": ...}).
    store_guard: False only in the tests that show what the store guard prevents.
    """

    def __init__(self, run_dir: str | Path, config: str | Path | None = None, *,
                 ports: Ports | None = None, model_store: str | Path | None = None, models: str | None = None,
                 properties: dict[str, str] | None = None, tmp_dir: str | Path | None = None,
                 store_guard: bool = True):
        self.run_dir = Path(run_dir).resolve()
        self.template = Path(config).resolve() if config is not None else default_config()
        if not self.template.is_file():
            raise ConfigError(f"TorchServe config not found: {self.template}")
        overrides = dict(ports.properties()) if ports is not None else {}
        if model_store is not None:
            overrides["model_store"] = str(Path(model_store).resolve())
        if models is not None:
            overrides["load_models"] = models
        overrides.update(properties or {})
        props = effective_properties(self.template, store_guard, overrides)
        self.properties = props
        self.ports = Ports.from_properties(props)
        self.tmp_dir = Path(tmp_dir).resolve() if tmp_dir else self.run_dir / "tmp"
        self.config_path = self.run_dir / "logs" / "config.properties"
        self.launcher: subprocess.Popen | None = None
        self.pid: int | None = None  # the Java frontend's PID
        self.ready_seconds: float | None = None
        self._started_at = 0.0
        self._tokens: Tokens | None = None

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    @property
    def grpc_inference_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc_inference}"

    @property
    def grpc_management_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc_management}"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def tokens(self) -> Tokens:
        if self._tokens is None:
            self._tokens = Tokens.read(self.key_file)
        return self._tokens

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "TorchServe":
        """Launch TorchServe and return once the Java frontend's PID is known and its ports answer."""
        if self.pid is not None:
            raise ServerError(f"TorchServe already started (pid {self.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.tmp_dir / ".model_server.pid"
        if pid_file.exists():  # a previous instance in this TMPDIR: refuse rather than guess
            raise ServerError(f"{pid_file} exists: is a TorchServe from {self.run_dir} still running? "
                              "(`polydet stop` stops the one `polydet serve` started)")
        self.key_file.unlink(missing_ok=True)  # so tokens() never reads a stale file
        write_properties(self.properties, self.config_path)
        env = dict(os.environ, TMPDIR=str(self.tmp_dir), TEMP=str(self.tmp_dir),
                   LOG_LOCATION=str(self.log_dir), METRICS_LOCATION=str(self.log_dir))
        env.pop("TS_CONFIG_FILE", None)  # it would override --ts-config
        cmd = [*torchserve_command(), "--start", "--ncs", "--foreground", "--ts-config", str(self.config_path)]
        with open(self.log_dir / "torchserve.out", "ab") as out:
            # Own session: Ctrl-C in the caller's terminal does not reach the server; stop() does.
            self.launcher = subprocess.Popen(cmd, cwd=self.run_dir, env=env, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        self._started_at = time.monotonic()
        deadline = self._started_at + timeout
        while self.pid is None:
            try:
                self.pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                self._check_alive()
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"TorchServe did not start within {timeout:.0f} s{self._log_tail()}")
                time.sleep(0.05)
        while not _port_open(self.ports.management):
            self._check_alive()
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"TorchServe's management port never opened{self._log_tail()}")
            time.sleep(0.1)
        return self

    def wait_ready(self, model: str = "polydet", version: str | None = None, timeout: float = 180.0) -> float:
        """Wait until a worker of ``model`` (default version unless given) is READY; return seconds since start."""
        import requests

        url = f"{self.management_url}/models/{model}" + (f"/{version}" if version else "")
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            self._check_alive()
            try:
                r = requests.get(url, headers={"Authorization": f"Bearer {self.tokens.management}"}, timeout=5)
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.ok and any(w.get("status") == "READY" for d in r.json() for w in d.get("workers", [])):
                    self.ready_seconds = time.monotonic() - self._started_at
                    return self.ready_seconds
            except (requests.RequestException, ValueError) as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise ServerError(f"model {model!r} not READY after {timeout:.0f} s (last answer: {last})"
                                  f"{self._log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the Java frontend by PID (SIGTERM, then SIGKILL), its workers with it; idempotent."""
        pid = self.pid
        if pid is None and self.launcher is not None and self.launcher.poll() is None:
            pid = _java_child(self.launcher.pid)  # stopped before the pid file appeared
        stop_pid(pid, timeout=timeout)
        if self.launcher is not None:
            try:
                self.launcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait()
        (self.tmp_dir / ".model_server.pid").unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)
        self.pid = None
        self.launcher = None
        self._tokens = None

    def __enter__(self) -> "TorchServe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state for `polydet stop` ------------------------------------------------------------------
    def save_state(self, path: str | Path | None = None) -> Path:
        import psutil

        path = Path(path) if path else self.log_dir / STATE_FILE
        state = {"pid": self.pid, "create_time": psutil.Process(self.pid).create_time(),
                 "launcher_pid": self.launcher.pid if self.launcher else None, "run_dir": str(self.run_dir),
                 "tmp_dir": str(self.tmp_dir), "ports": asdict(self.ports)}
        path.write_text(json.dumps(state, indent=1))
        return path

    # -- helpers -----------------------------------------------------------------------------------
    def _check_alive(self) -> None:
        if self.launcher is not None and self.launcher.poll() is not None:
            code = self.launcher.returncode
            self.pid = None
            raise ServerError(f"TorchServe exited with code {code}{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        parts = []
        for name in ("torchserve.out", "ts_log.log", "model_log.log"):
            f = self.log_dir / name
            if f.exists():
                tail = f.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"\n--- {f} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "".join(parts)


def _java_child(launcher_pid: int) -> int | None:
    import psutil

    try:
        kids = psutil.Process(launcher_pid).children()
    except psutil.Error:
        return None
    return next((p.pid for p in kids if JAVA_MAIN in " ".join(p.cmdline())), None)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_pid(pid: int | None, timeout: float = 30.0, create_time: float | None = None) -> bool:
    """SIGTERM the TorchServe frontend ``pid``, wait, then SIGKILL it and any worker left.

    ``create_time`` (from a saved state) guards against a recycled PID. Returns True if something was
    stopped. Refuses to touch a process that is not TorchServe's Java frontend.
    """
    import psutil

    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return False
        if JAVA_MAIN not in proc.cmdline():
            raise ServerError(f"pid {pid} is not a TorchServe frontend: {' '.join(proc.cmdline())[:200]}")
        children = proc.children(recursive=True)  # the Python workers
    except psutil.NoSuchProcess:
        return False
    proc.send_signal(signal.SIGTERM)  # TorchServe's shutdown hook stops the workers (~4 s)
    _, alive = psutil.wait_procs([proc], timeout=timeout)
    for p in alive:
        p.kill()
    _, alive = psutil.wait_procs(children, timeout=10)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    return True
