"""nginx in front of TorchServe's REST inference API: render its config, start and stop it by PID.

Why a proxy (SECURITY.md, RELIABILITY.md): TorchServe 0.12.0 buffers a whole request body in the Java
frontend's direct memory before it checks the token and never closes an idle connection, and it fails the
batch of a worker that is scaled down with a 500. nginx bounds the body size and each client's time and
connections, buffers bodies on disk so TorchServe only sees complete requests, refuses a request without an
``Authorization`` header before reading its body, and sends a request that got a 500 once more.

The config is rendered from the packaged ``nginx.conf.in`` into a run folder of its own (config, pid file,
logs, temp files); nginx runs in the foreground as a child (``-g 'daemon off;'``) and never reads the system
nginx config.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Self

from ..errors import ConfigError
from .server import ServerError

TEMPLATE = "nginx.conf.in"
CLIENT_TIMEOUT_S = 10  # body, header, send and keep-alive timeouts: a stalled client is closed after this
# TorchServe's answer. Past it the request is sent once more (proxy_next_upstream timeout): TorchServe 0.12.0
# never answers a batch that was still filling when its worker was scaled down or died (RELIABILITY.md). A
# prediction here takes well under a second; one that really takes longer than this is sent twice, then 504.
READ_TIMEOUT_S = 30
CONN_PER_CLIENT = 32  # concurrent connections per client address
MAX_BODY = 16777216  # config.properties' max_request_size


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def render_config(run_dir: Path, listen: str, upstream: str, *, max_body: int = MAX_BODY,
                  client_timeout_s: int = CLIENT_TIMEOUT_S, read_timeout_s: int = READ_TIMEOUT_S,
                  conn_per_client: int = CONN_PER_CLIENT) -> str:
    """The nginx config text. ``listen`` and ``upstream`` are ``host:port``; ``run_dir`` is absolute."""
    values = {"RUN": str(run_dir), "LISTEN": listen, "UPSTREAM": upstream, "MAX_BODY": str(int(max_body)),
              "CLIENT_TIMEOUT": f"{int(client_timeout_s)}s", "READ_TIMEOUT": f"{int(read_timeout_s)}s",
              "CONN_PER_CLIENT": str(int(conn_per_client)),
              # A root master would hand the workers to "nobody", who cannot reach a private run folder. A
              # non-root master runs its workers as itself and must not name a user.
              "USER": f"user {getpass.getuser()};" if os.geteuid() == 0 else ""}
    for v in (listen, upstream, str(run_dir)):
        if any(c in v for c in ";{}'\"\n ") or not v:
            raise ConfigError(f"unsafe value for the nginx config: {v[:80]!r}")
    text = resources.files(__package__).joinpath(TEMPLATE).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


class Proxy:
    """One nginx listening on ``listen_port`` in front of the TorchServe inference API at ``upstream``."""

    def __init__(self, run_dir: str | Path, upstream: str, listen_port: int, host: str = "127.0.0.1", **config):
        self.run_dir = Path(run_dir).resolve()
        self.upstream, self.host, self.port = upstream, host, int(listen_port)
        self.config = config
        self.conf_path = self.run_dir / "nginx.conf"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 15.0) -> Self:
        binary = nginx_binary()
        if binary is None:
            raise ServerError("nginx is not installed (Debian: apt-get install nginx; `make sysdeps`)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(render_config(self.run_dir, f"{self.host}:{self.port}", self.upstream,
                                                **self.config))
        # -e: nginx opens its error log before reading the config; the default is a system path.
        cmd = [binary, "-c", str(self.conf_path), "-p", str(self.run_dir), "-e", str(self.run_dir / "error.log"),
               "-g", "daemon off;"]
        # stderr to a file, not a pipe: `polydet serve` leaves nginx running after it exits.
        with open(self.run_dir / "stderr.log", "wb") as err_file:
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _port_open(self.host, self.port):
            if self.process.poll() is not None:
                err = (self.run_dir / "stderr.log").read_text(errors="replace")[-2000:]
                self.process = None
                raise ServerError(f"nginx exited with {' '.join(cmd)}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"nginx did not listen on {self.host}:{self.port} in {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (nginx's fast shutdown) the master we started, then SIGKILL its group if it lingers."""
        if self.process is None:
            return
        p, self.process = self.process, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # its own session: only this master and its workers
                p.wait(5)

    def state(self) -> dict:
        """What `polydet stop` needs to stop this nginx later (see ``stop_pid``)."""
        import psutil

        return {"pid": self.pid, "create_time": psutil.Process(self.pid).create_time(), "conf": str(self.conf_path),
                "url": self.url}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_pid(pid: int, create_time: float | None = None, conf: str | None = None, timeout: float = 10.0) -> bool:
    """SIGTERM the nginx master ``pid`` that ``Proxy`` started (its title names ``conf``), wait, then SIGKILL it
    and its workers. Returns True if something was stopped; refuses any other process."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return False
        title = " ".join(proc.cmdline())  # "nginx: master process /usr/sbin/nginx -c CONF ..."
        if "nginx" not in title or (conf and conf not in title):
            raise ServerError(f"pid {pid} is not the nginx polydet started: {title[:200]}")
        children = proc.children()
    except psutil.NoSuchProcess:
        return False
    proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs([proc, *children], timeout=timeout)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0
