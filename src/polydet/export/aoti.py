"""AOTInductor exporter: ``torch.export`` of the fused model, compiled ahead of time by Inductor into a
``.pt2`` package (``torch._inductor.aoti_compile_and_package``): generated kernels (Triton on CUDA, C++ on
the CPU) and the weights in one file that runs without Python model code.

A package runs only on the device type it was compiled for (the CUDA one also needs a GPU of that compute
capability): export on the serving device (``--device cuda``). The batch dimension is dynamic, 1 to
``MAX_BATCH``; the image size is the export's. On CUDA the model and its example are channels-last (cuDNN's
and Inductor's fast layout for convolutions; BENCHMARKS.md) and the backend feeds its input the same way.
ModelInfo and these facts go into the package's metadata (``aot_inductor.metadata``).

A CUDA package is first loaded and run in a fresh Python process (:func:`smoke_load`) before the export's
parity check loads it in this one: the first CUDA package compiled on the H100 crashed the loading process
with SIGSEGV (BENCHMARKS.md, "GPU serving"), and a crash there is reported as an ExportError with the
child's last output instead of killing the exporter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ..backends.aoti import read_metadata
from ..backends.base import META_KEY
from ..errors import ExportError
from ..meta import ModelInfo
from .common import ExportJob

MAX_BATCH = 1024  # the largest batch one call takes; the backend splits larger ones
CHANNELS_LAST_KEY = "polydet_channels_last"
MAX_BATCH_KEY = "polydet_max_batch"
FIXED_BATCH_KEY = "polydet_batch_fixed"  # "true": compiled for exactly MAX_BATCH_KEY images (the backend pads)
SMOKE_TIMEOUT_S = 180  # a fresh process: CUDA context, the package's extraction and first kernels' load


def export_aoti(job: ExportJob) -> None:
    cuda = job.example.device.type == "cuda"
    metadata = {META_KEY: job.info.to_json(), CHANNELS_LAST_KEY: str(cuda).lower(), MAX_BATCH_KEY: str(MAX_BATCH)}
    compile_package(job.model, job.example, job.out, metadata, channels_last=cuda)
    if cuda:
        smoke_load(job.out, job.example.dtype)


def compile_package(model: torch.nn.Module, example: torch.Tensor, out: Path | str, metadata: dict[str, str],
                    channels_last: bool = False, max_batch: int | None = MAX_BATCH) -> Path:
    """``model`` exported with ``example``'s shape and compiled into the package ``out``. ``max_batch``: the
    batch dimension is dynamic from 1 to it; None: fixed at ``example``'s batch. ``metadata``: string keys
    and values the package carries (Inductor adds its own: AOTI_DEVICE_KEY, the compute capability)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if max_batch is not None and len(example) == 1:  # torch.export specialises a dimension whose size is 1
        example = torch.cat([example, example])
    example = example.contiguous(memory_format=fmt)
    shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch is not None else None
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    # a copy: Inductor writes its own keys into the dict it is given
    torch._inductor.aoti_compile_and_package(program, package_path=str(out),
                                             inductor_configs={"aot_inductor.metadata": dict(metadata)})
    return Path(out)


_SMOKE = """
import sys, torch
torch.cuda.init()
from torch._inductor import aoti_load_package
m = aoti_load_package(sys.argv[1], device_index=torch.cuda.current_device())
x = torch.rand(2, 3, int(sys.argv[2]), int(sys.argv[2]), device="cuda", dtype=getattr(torch, sys.argv[3]))
out = m(x.contiguous(memory_format=torch.channels_last if sys.argv[4] == "true" else torch.contiguous_format))
torch.cuda.synchronize()
print("smoke load ok", [tuple(o.shape) for o in (out if isinstance(out, (list, tuple)) else [out])])
"""


def smoke_load(path: Path | str, dtype: torch.dtype = torch.float16, timeout: float = SMOKE_TIMEOUT_S) -> str:
    """Load the CUDA package ``path`` and run a batch of 2 in a fresh Python process; its output, or an
    ExportError naming how it ended (a signal: the process crashed) with its last lines."""
    meta = read_metadata(path)
    size = ModelInfo.from_json(meta[META_KEY]).imgsz
    cmd = [sys.executable, "-X", "faulthandler", "-c", _SMOKE, str(path), str(size), str(dtype).split(".")[-1],
           meta.get(CHANNELS_LAST_KEY, "false")]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired as e:
        raise ExportError(f"{path}: loading the CUDA package in a fresh process took over {timeout:.0f} s") from e
    if r.returncode != 0:
        how = f"signal {-r.returncode}" if r.returncode < 0 else f"exit code {r.returncode}"
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-12:])
        raise ExportError(f"{path}: the compiled CUDA package failed to load and run in a fresh process "
                          f"({how}):\n{tail}")
    return r.stdout.strip()

