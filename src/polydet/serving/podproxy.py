"""nginx in front of TorchServe inside one Kubernetes pod (deploy/k8s): ``python -m polydet.serving.podproxy``.

Why not TorchServe's own keys: TorchServe 0.12.0 draws new random keys at every start (key_file.json) and
cannot be given one, so every replica behind a Service has different keys and a client could never hold one
that works everywhere. Clients therefore present a key of a Kubernetes Secret (a file with one key per line,
mounted into this container); nginx accepts any of them and forwards the request with this pod's own
TorchServe inference key, read from the key_file.json of the shared start folder. TorchServe keeps token
authorization on and listens on the pod's loopback only; its key never leaves the pod.

This process renders ``podproxy.conf.in`` (the limits of ``proxy.py``: body cap, client timeouts, one retry of
a 500 or an unanswered request), runs nginx in the foreground as its child and re-renders + reloads (SIGHUP)
whenever the Secret's file or key_file.json changes: a rotated Secret (kubelet updates the mounted file) or a
restarted TorchServe (new keys) needs no restart of the proxy. SIGTERM/SIGINT stop nginx gracefully (SIGQUIT:
requests in flight are finished).

``check`` is the container's readiness probe: ``GET /ping`` through nginx with the first key of the Secret,
so it passes only when the whole chain works (Secret key accepted, TorchServe key swapped in, TorchServe
healthy).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from ..errors import ConfigError
from .proxy import CLIENT_TIMEOUT_S, CONN_PER_CLIENT, MAX_BODY, READ_TIMEOUT_S, nginx_binary

TEMPLATE = "podproxy.conf.in"
MIN_KEY_LENGTH = 16  # a client key is a real secret (TorchServe's own are 8 characters of 48 bits)
KEY_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # RFC 6750 token68: safe inside an nginx string
POLL_S = 1.0  # how often the key files are checked for a change


def read_client_keys(path: str | Path) -> list[str]:
    """The keys of the Secret's file: one per line, blank lines and ``#`` comments ignored."""
    keys = [ln.strip() for ln in Path(path).read_text().splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ConfigError(f"{path}: no client key")
    for k in keys:
        if len(k) < MIN_KEY_LENGTH or not KEY_CHARS.match(k):
            raise ConfigError(f"{path}: a client key must be >= {MIN_KEY_LENGTH} characters of [A-Za-z0-9._~+/=-]")
    return keys


def torchserve_key(home: str | Path) -> str | None:
    """This pod's TorchServe inference key, or None while key_file.json is not written yet."""
    try:
        key = json.loads((Path(home) / "key_file.json").read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return key if KEY_CHARS.match(key) else None


def render_config(run_dir: Path, client_keys: list[str], ts_key: str, *, listen: str, metrics_listen: str,
                  upstream: str, metrics_upstream: str) -> str:
    """The nginx config text; addresses are ``host:port``, ``run_dir`` absolute."""
    for v in (listen, metrics_listen, upstream, metrics_upstream, str(run_dir)):
        if not v or any(c in v for c in ";{}'\"\n ") or "@" in v:
            raise ConfigError(f"unsafe value for the nginx config: {v[:80]!r}")
    for k in (*client_keys, ts_key):
        if not KEY_CHARS.match(k):
            raise ConfigError("a key holds characters nginx cannot take")
    values = {"RUN": str(run_dir), "LISTEN": listen, "METRICS_LISTEN": metrics_listen, "UPSTREAM": upstream,
              "METRICS_UPSTREAM": metrics_upstream, "MAX_BODY": str(MAX_BODY),
              "CLIENT_TIMEOUT": f"{CLIENT_TIMEOUT_S}s", "READ_TIMEOUT": f"{READ_TIMEOUT_S}s",
              "CONN_PER_CLIENT": str(CONN_PER_CLIENT), "TS_KEY": ts_key,
              # A root master would hand its workers to "nobody" (proxy.py says why): only when run as root.
              "USER": f"user {getpass.getuser()};" if os.geteuid() == 0 else "",
              "CLIENT_KEYS": "\n".join(f'        "Bearer {k}" 1;' for k in client_keys)}
    text = resources.files(__package__).joinpath(TEMPLATE).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


class PodProxy:
    """nginx as a child of this process, its config kept in step with the two key files."""

    def __init__(self, home: Path, keys_file: Path, run_dir: Path, addresses: dict[str, str]):
        self.home, self.keys_file, self.run_dir, self.addresses = home, keys_file, run_dir.resolve(), addresses
        self.conf = self.run_dir / "nginx.conf"
        self.nginx: subprocess.Popen | None = None
        self.stopping = False
        self.rendered: tuple | None = None

    def wait_for_keys(self, timeout: float) -> tuple[list[str], str]:
        deadline = time.monotonic() + timeout
        while (ts_key := torchserve_key(self.home)) is None:
            if self.stopping or time.monotonic() > deadline:
                raise ConfigError(f"no TorchServe key in {self.home}/key_file.json after {timeout:.0f} s")
            time.sleep(POLL_S)
        return read_client_keys(self.keys_file), ts_key

    def write(self, client_keys: list[str], ts_key: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(render_config(self.run_dir, client_keys, ts_key, **self.addresses))
        tmp.chmod(0o600)  # it holds the keys
        tmp.replace(self.conf)
        self.rendered = (tuple(client_keys), ts_key)

    def start(self, timeout: float = 300.0) -> None:
        binary = nginx_binary()
        if binary is None:
            raise ConfigError("nginx is not installed in this image (Debian package nginx)")
        self.write(*self.wait_for_keys(timeout))
        cmd = [binary, "-c", str(self.conf), "-p", str(self.run_dir), "-e", str(self.run_dir / "error.log"),
               "-g", "daemon off;"]
        self.nginx = subprocess.Popen(cmd)
        print(f"polydet-podproxy: nginx pid {self.nginx.pid} on {self.addresses['listen']}", file=sys.stderr)

    def refresh(self) -> bool:
        """Re-render and reload nginx if a key file changed; True if it did. A broken Secret keeps the old config."""
        ts_key = torchserve_key(self.home)
        try:
            client_keys = read_client_keys(self.keys_file)
        except (OSError, ConfigError) as e:
            print(f"polydet-podproxy: keeping the current keys: {e}", file=sys.stderr)
            return False
        if ts_key is None or (tuple(client_keys), ts_key) == self.rendered:
            return False
        self.write(client_keys, ts_key)
        self.nginx.send_signal(signal.SIGHUP)  # nginx checks the new config and keeps the old one if it fails
        print("polydet-podproxy: keys changed, nginx reloaded", file=sys.stderr)
        return True

    def on_signal(self, _signum, _frame) -> None:
        self.stopping = True
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        self.start()
        while self.nginx.poll() is None:
            if not self.stopping:
                self.refresh()
            time.sleep(POLL_S)
        return 0 if self.stopping else (self.nginx.returncode or 1)


def check(url: str, keys_file: str | Path, timeout: float = 5.0) -> int:
    """Readiness: 0 if ``url``/ping answers 200 through nginx with the Secret's first key, else 1."""
    key = read_client_keys(keys_file)[0]
    req = urllib.request.Request(f"{url.rstrip('/')}/ping", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - a local http URL
            ok = r.status == 200
    except (urllib.error.URLError, OSError) as e:
        print(f"not ready: {e}")
        return 1
    return 0 if ok else 1


def make_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m polydet.serving.podproxy", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("run", "check"))
    p.add_argument("--home", default=env("POLYDET_HOME", "/var/lib/polydet"), help="TorchServe's start folder")
    p.add_argument("--keys", default=env("POLYDET_PROXY_KEYS", "/etc/polydet-keys/keys"),
                   help="the Secret's file of client keys")
    p.add_argument("--run-dir", default=env("POLYDET_PROXY_RUN", "/tmp/polydet-proxy"))
    p.add_argument("--listen", default=env("POLYDET_PROXY_LISTEN", "0.0.0.0:8000"))
    p.add_argument("--metrics-listen", default=env("POLYDET_PROXY_METRICS_LISTEN", "0.0.0.0:9082"))
    p.add_argument("--upstream", default=env("POLYDET_PROXY_UPSTREAM", "127.0.0.1:8080"))
    p.add_argument("--metrics-upstream", default=env("POLYDET_PROXY_METRICS_UPSTREAM", "127.0.0.1:8082"))
    return p


def main(argv: list[str] | None = None) -> int:
    a = make_parser().parse_args(argv)
    try:
        if a.command == "check":
            host, _, port = a.listen.rpartition(":")
            return check(f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}", a.keys)
        addresses = {"listen": a.listen, "metrics_listen": a.metrics_listen, "upstream": a.upstream,
                     "metrics_upstream": a.metrics_upstream}
        return PodProxy(Path(a.home), Path(a.keys), Path(a.run_dir), addresses).run()
    except (ConfigError, OSError) as e:
        print(f"polydet-podproxy: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
