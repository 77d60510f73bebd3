"""Which GPUs TorchServe's workers go on: ``polydet serve --gpus`` and ``polydet archive --gpu --gpus``.

What TorchServe 0.12.0 does (its frontend: ConfigManager, Model, WorkLoadManager.addThreads):

- ``number_of_gpu`` becomes min(the GPUs it finds, the property): the entries of CUDA_VISIBLE_DEVICES when
  that is set (parsed as integers: a GPU-UUID entry stops the frontend), else nvidia-smi's list.
- a model's workers get ``gpu_id`` round-robin over 0 .. number_of_gpu-1, or over the ``deviceIds`` of its
  model-config.yaml when given (each must be < number_of_gpu, else the list is ignored with a warning).
- ``gpu_id`` is in the visible numbering (workers inherit CUDA_VISIBLE_DEVICES): the handler's cuda:{gpu_id}.
- a worker that dies is restarted by the same WorkerThread, so on the same gpu_id.

So K workers per GPU on G GPUs are G*K workers (minWorkers = maxWorkers): round-robin gives each GPU K.
Standard library only, as properties.py: the count of visible GPUs may be passed in (tests, the CLI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Callable, Mapping

from ..errors import ConfigError


def visible_gpus(environ: Mapping[str, str] | None = None, cuda_count: Callable[[], int] | None = None) -> int:
    """GPUs this process and TorchServe see: CUDA_VISIBLE_DEVICES' entries when set (up to the first
    invalid one, as CUDA reads it), else ``cuda_count()`` (default torch.cuda.device_count())."""
    env = os.environ if environ is None else environ
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        n = 0
        for entry in (e.strip() for e in value.split(",")):
            if entry.startswith(("GPU-", "MIG-")):
                raise ConfigError(f"CUDA_VISIBLE_DEVICES={value!r}: TorchServe 0.12.0 reads its entries as "
                                  "integers and fails on a UUID; name the GPUs by index")
            if not entry.isdigit():
                break  # CUDA ignores this entry and every one after it ("-1" hides all GPUs)
            n += 1
        return n
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count
    return int(cuda_count())


@dataclass(frozen=True)
class GpuPlacement:
    """The GPUs (visible numbering) a model's workers go on, out of ``visible``."""

    device_ids: tuple[int, ...]
    visible: int

    @property
    def count(self) -> int:
        return len(self.device_ids)

    @property
    def prefix(self) -> bool:
        """The first ``count`` GPUs: number_of_gpu alone places them, no deviceIds needed."""
        return self.device_ids == tuple(range(self.count))

    def number_of_gpu(self) -> int:
        """config.properties' number_of_gpu: the count for the first GPUs; all visible ones otherwise, so
        that every named deviceId is below it."""
        return self.count if self.prefix else self.visible

    def properties(self) -> dict[str, str]:
        return {"number_of_gpu": str(self.number_of_gpu())}

    def model_device_ids(self) -> tuple[int, ...]:
        """model-config.yaml's deviceIds: empty for the first GPUs (round-robin over number_of_gpu)."""
        return () if self.prefix else self.device_ids

    def devices(self) -> list[str]:
        return [f"cuda:{i}" for i in self.device_ids]

    def workers(self, per_gpu: int) -> int:
        return per_gpu * self.count

    def assign(self, workers: int) -> list[int]:
        """gpu_id of each of ``workers`` workers of a fresh TorchServe 0.12.0, in start order: its counter for
        the number_of_gpu round-robin (shared by all models) starts at 0 and is incremented before use; a
        deviceIds list has its own counter, used before the increment."""
        if self.prefix:
            n = self.number_of_gpu()
            return [(k + 1) % n for k in range(workers)]
        return [self.device_ids[k % self.count] for k in range(workers)]


def parse_gpus(spec: str, visible: int) -> GpuPlacement:
    """``all`` (every visible GPU), ``N`` (the first N) or a comma list of visible indices (``0,2``; one
    GPU by index: ``1,``). Refuses what TorchServe would quietly change (too many, repeats, none)."""
    spec = spec.strip().lower()
    if visible < 1:
        raise ConfigError(f"--gpus {spec}: no GPU is visible (CUDA_VISIBLE_DEVICES, drivers); serve on the CPU "
                          "without --gpus")
    if spec == "all":
        return GpuPlacement(tuple(range(visible)), visible)
    if "," not in spec:
        if not spec.isdigit() or int(spec) < 1:
            raise ConfigError(f"--gpus {spec!r}: expected all, a count N >= 1, or indices like 0,1 (one: 1,)")
        if int(spec) > visible:
            raise ConfigError(f"--gpus {spec}: only {visible} GPU(s) visible")
        return GpuPlacement(tuple(range(int(spec))), visible)
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if not entries or not all(e.isdigit() for e in entries):
        raise ConfigError(f"--gpus {spec!r}: expected indices like 0,1 (one GPU: 1,)")
    ids = tuple(int(e) for e in entries)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus {spec}: an index is repeated")
    bad = [i for i in ids if i >= visible]
    if bad:
        raise ConfigError(f"--gpus {spec}: GPU {bad[0]} is not visible (indices 0..{visible - 1}, in "
                          "CUDA_VISIBLE_DEVICES' order when it is set)")
    return GpuPlacement(ids, visible)


def gpu_memory_mib(device: str) -> float | None:
    """MiB the CUDA caching allocator of this process holds on ``device`` (its CUDA context, ~0.5 GiB, is not
    counted; nvidia-smi's per-process figure is); None on the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.memory_reserved(device) / 2**20


def gpu_utilization(device: str) -> float | None:
    """Percent of the last sample period the GPU ran a kernel (NVML through torch); None on the CPU or when
    NVML cannot be read (pynvml not installed)."""
    if not device.startswith("cuda"):
        return None
    import torch

    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 - ModuleNotFoundError (pynvml) or an NVML error: no figure
        return None
