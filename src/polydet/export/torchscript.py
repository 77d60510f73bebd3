"""TorchScript exporter: a trace of the fused model, its ModelInfo in the archive's extra files."""

from __future__ import annotations

import warnings

import torch

from ..backends.base import META_KEY
from .common import ExportJob


def export_torchscript(job: ExportJob) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        ts = torch.jit.trace(job.model, job.example, strict=False)
    ts.save(str(job.out), _extra_files={META_KEY: job.info.to_json()})
