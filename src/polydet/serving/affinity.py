"""One CPU per worker process: ``handler.pin_cpu``.

TorchServe starts its CPU workers unpinned, so the kernel moves them between cores and their caches go
cold; its own remedy (``cpu_launcher_enable``) needs ``torch.backends.xeon.run_cpu`` and numactl. A
worker here takes the first CPU of its allowed set (``sched_getaffinity``: a ``taskset`` or container
cpuset is respected) that no other worker holds, where holding is an exclusive ``flock`` on
``polydet-cpu-<N>.lock`` in a folder the workers share (their temporary folder): the kernel releases it
when the worker exits, so a restarted worker finds its CPU free again. With more workers than CPUs the
rest stay unpinned; a single allowed CPU pins nothing.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

_held: list = []  # the open lock files of this process (a lock lives as long as its file)


def claim_cpu(lock_dir: str | Path | None = None) -> int | None:
    """Pin this process to a free CPU of its allowed set -> the CPU, or None (one CPU only, or none free)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    folder = Path(lock_dir or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    for cpu in cpus:
        f = open(folder / f"polydet-cpu-{cpu}.lock", "w")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _held.append(f)
        os.sched_setaffinity(0, {cpu})
        return cpu
    return None
