"""AOTInductor exporter: ``torch.export`` of the fused model, compiled ahead of time by Inductor into a
``.pt2`` package (``torch._inductor.aoti_compile_and_package``): generated kernels (Triton on CUDA, C++ on
the CPU) and the weights in one file that runs without Python model code.

A package runs only on the device type it was compiled for (the CUDA one also needs a GPU of that compute
capability): export on the serving device (``--device cuda``). The batch dimension is dynamic, 1 to
``MAX_BATCH``; the image size is the export's. On CUDA the model and its example are channels-last (cuDNN's
and Inductor's fast layout for convolutions; BENCHMARKS.md) and the backend feeds its input the same way.
ModelInfo and these facts go into the package's metadata (``aot_inductor.metadata``).
"""

from __future__ import annotations

import torch

from ..backends.base import META_KEY
from .common import ExportJob

MAX_BATCH = 1024  # the largest batch one call takes; the backend splits larger ones
CHANNELS_LAST_KEY = "polydet_channels_last"
MAX_BATCH_KEY = "polydet_max_batch"


def export_aoti(job: ExportJob) -> None:
    cuda = job.example.device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = job.model.to(memory_format=fmt)
    # batch 2: torch.export specialises a dimension whose example size is 1
    example = torch.cat([job.example, job.example]).contiguous(memory_format=fmt)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    metadata = {META_KEY: job.info.to_json(), CHANNELS_LAST_KEY: str(cuda).lower(), MAX_BATCH_KEY: str(MAX_BATCH)}
    torch._inductor.aoti_compile_and_package(program, package_path=str(job.out),
                                             inductor_configs={"aot_inductor.metadata": metadata})
