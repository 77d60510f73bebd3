#!/usr/bin/env python3
"""Container entrypoint: write the effective TorchServe config, run TorchServe in the foreground, stop
it cleanly on SIGTERM/SIGINT. Standard library and polydet's light config helpers only (no torch); runs
as the image's non-root user.

Why this stays PID 1 instead of ``exec torchserve --foreground``: ``torchserve`` is a Python launcher
that starts the Java frontend as its child and waits for it, with no signal handler. The kernel drops
signals that have no handler when they are sent to a namespace's PID 1, so ``docker stop`` would wait
out its grace period and SIGKILL everything; and where the launcher is not PID 1, SIGTERM kills the
launcher alone and leaves Java running. Here SIGTERM/SIGINT go to the Java frontend (what
``torchserve --stop`` does: its shutdown hook stops the Python workers), then this process waits for
the launcher, reaps what is left and exits 0. TorchServe ending without being asked exits non-zero,
so restart policies fire.

Environment (defaults in brackets):
  POLYDET_CONFIG        config.properties template [/opt/polydet/config.properties]; its relative paths
                        resolve against its own folder
  POLYDET_HOME          start folder: key_file.json, logs/, tmp/, the effective config.properties
                        [/var/lib/polydet]
  POLYDET_BIND_ADDRESS  address of all five listeners [127.0.0.1]; see the Dockerfile's BIND_ADDRESS
  POLYDET_INFERENCE_PORT, POLYDET_MANAGEMENT_PORT, POLYDET_METRICS_PORT,
  POLYDET_GRPC_INFERENCE_PORT, POLYDET_GRPC_MANAGEMENT_PORT   [the template's ports]
  POLYDET_STOP_TIMEOUT  seconds Java gets after SIGTERM before everything is killed [20]
Arguments are passed on to torchserve.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from polydet.errors import ConfigError
from polydet.serving.properties import effective_properties, with_environment
from polydet.serving.server import torchserve_command

JAVA_MAIN = "org.pytorch.serve.ModelServer"
def log(msg: str) -> None:
    print(f"polydet-entrypoint: {msg}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, home: Path, stop_timeout: float):
        self.home = home
        self.tmp = home / "tmp"
        self.stop_timeout = stop_timeout
        self.launcher: subprocess.Popen | None = None
        self.stopping = False
        self.killed = False

    def java_pid(self) -> int | None:
        """The Java frontend's PID from TorchServe's pid file, if that process is the frontend."""
        try:
            pid = int((self.tmp / ".model_server.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if JAVA_MAIN.encode() in cmdline else None

    def on_signal(self, signum, _frame) -> None:
        if self.stopping:
            return
        self.stopping = True
        log(f"{signal.Signals(signum).name}: stopping TorchServe")
        pid = self.java_pid()
        try:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            elif self.launcher is not None:  # Java not started yet: end the launcher's whole group
                os.killpg(self.launcher.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        signal.alarm(max(1, int(self.stop_timeout)))

    def on_alarm(self, _signum, _frame) -> None:
        log(f"TorchServe still running {self.stop_timeout:.0f} s after SIGTERM: killing it")
        self.killed = True
        self.kill_group(signal.SIGKILL)

    def kill_group(self, sig: int) -> None:
        if self.launcher is not None:
            try:
                os.killpg(self.launcher.pid, sig)
            except ProcessLookupError:
                pass

    def run(self, props: dict[str, str], extra_args: list[str]) -> int:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGALRM, self.on_alarm)
        # A restarted container keeps its files: a stale pid file would make torchserve refuse to start
        # and an old key_file.json would hand out dead tokens until the new one is written.
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        (self.home / "logs").mkdir(exist_ok=True)
        (self.home / "key_file.json").unlink(missing_ok=True)
        config = self.home / "config.properties"
        config.write_text("# Written by docker/entrypoint.py from $POLYDET_CONFIG at each start.\n"
                          + "".join(f"{k}={v}\n" for k, v in props.items()))
        env = dict(os.environ, TMPDIR=str(self.tmp), TEMP=str(self.tmp),
                   LOG_LOCATION=str(self.home / "logs"), METRICS_LOCATION=str(self.home / "logs"))
        env.pop("TS_CONFIG_FILE", None)  # it would override --ts-config
        cmd = [*torchserve_command(), "--start", "--ncs", "--foreground", "--ts-config", str(config), *extra_args]
        if self.stopping:  # asked to stop before anything started
            return 0
        log(f"starting TorchServe: inference {props['inference_address']}, management "
            f"{props['management_address']}, metrics {props['metrics_address']}, gRPC "
            f"{props['grpc_inference_address']}:{props['grpc_inference_port']}/{props['grpc_management_port']}")
        # Its own process group, so the group can be killed as a whole and a terminal's Ctrl-C reaches
        # only this process (which turns it into a clean stop).
        self.launcher = subprocess.Popen(cmd, cwd=self.home, env=env, start_new_session=True)
        if self.stopping:  # the signal came while the launcher was being spawned
            self.kill_group(signal.SIGTERM)
        code = self.wait_launcher()
        if not self.stopping:
            log(f"TorchServe exited on its own (launcher status {code})")
        # Workers or a Java frontend the launcher left behind; as PID 1 this process also reaps them.
        self.kill_group(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while self.group_alive() and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.1)
        self.kill_group(signal.SIGKILL)
        self.reap()
        signal.alarm(0)
        (self.home / "key_file.json").unlink(missing_ok=True)  # its tokens died with the server
        if self.stopping and not self.killed:
            log("TorchServe stopped")
            return 0
        return code or 1

    def wait_launcher(self) -> int:
        """Wait for the launcher, reaping any other child (orphans are re-parented to PID 1)."""
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                return self.launcher.returncode or 0
            except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait itself
                continue
            if pid == self.launcher.pid:
                self.launcher.returncode = os.waitstatus_to_exitcode(status)
                return self.launcher.returncode

    def group_alive(self) -> bool:
        try:
            os.killpg(self.launcher.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    @staticmethod
    def reap() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    template = Path(os.environ.get("POLYDET_CONFIG", "/opt/polydet/config.properties"))
    home = Path(os.environ.get("POLYDET_HOME", "/var/lib/polydet"))
    if not template.is_file():
        log(f"config template {template} not found (POLYDET_CONFIG)")
        return 2
    try:
        stop_timeout = float(os.environ.get("POLYDET_STOP_TIMEOUT", "20"))
    except ValueError:
        log("POLYDET_STOP_TIMEOUT must be a number of seconds")
        return 2
    home.mkdir(parents=True, exist_ok=True)
    try:
        props = with_environment(effective_properties(template))
    except ConfigError as err:
        log(str(err))
        return 2
    return Supervisor(home, stop_timeout).run(props, argv)


if __name__ == "__main__":
    sys.exit(main())
