"""polydet.fronts.launch without a server: the venv specs, free ports, and Front.stop ending a process tree
whose child outlives its parent's SIGTERM (what PyTriton does with tritonserver)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil

from polydet.fronts import launch

# A parent that exits on SIGTERM and a child that ignores SIGTERM (as tritonserver outlives PyTriton's SIGTERM)
TREE = textwrap.dedent("""
    import signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child up', flush=True); time.sleep(600)"])
    print(child.pid, flush=True)
    time.sleep(600)
""")


def test_specs_pin_the_servers_and_the_serving_path():
    kserve, triton = launch.SPECS["kserve"].requirements, launch.SPECS["triton"].requirements
    for reqs in (kserve, triton):
        assert "torch==2.13.0" in reqs and "numba==0.68.0" in reqs and "onnxruntime==1.32.0" in reqs
    assert "kserve==0.21.0" in kserve and "nvidia-pytriton==0.7.0" in triton and "numpy<2" in triton
    assert launch.KSERVE.key() != launch.TRITON.key()


def test_free_ports_are_distinct_and_bindable():
    import socket

    ports = launch.free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_stop_ends_a_child_that_outlives_its_parents_sigterm(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = psutil.Process(int(proc.stdout.readline()))
    deadline = time.monotonic() + 30
    while not any(p.pid == child.pid for p in psutil.Process(proc.pid).children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    front = launch.Front("test", proc, tmp_path, 1, 2)
    started = time.monotonic()
    stopped = front.stop(timeout=2)
    assert stopped == [proc.pid, child.pid]
    assert proc.returncode is not None
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - started < 20
    assert front.stop() == []  # idempotent
