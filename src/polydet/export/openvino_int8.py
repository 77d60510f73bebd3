"""INT8 OpenVINO IRs: NNCF post-training quantization of the fp32 IR, calibrated on the same images as the
ONNX INT8 path (``QuantConfig.calib``: synthetic scenes or a folder, letterboxed like the pipeline).

Recipe: NNCF's MIXED preset (symmetric per-channel weights, asymmetric activations) with the detection head
kept in float, as for ONNX Runtime: the single output mixes corner pixels and probabilities.

NNCF runs in a child process with ``NNCF_CI=1``: NNCF sends usage telemetry unless the user opted out, and
decides that when it is imported; the variable is its own switch, set here only in the child's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..backends.base import META_KEY
from ..errors import ConfigError, ExportError, require
from ..meta import ModelInfo
from .int8 import QuantConfig, calibration_images


def check_config(cfg: QuantConfig) -> None:
    """Refuse the ONNX Runtime options NNCF's recipe has no equivalent for (never silently ignored)."""
    ort_only = {"method": cfg.method != "minmax", "per_channel": not cfg.per_channel,
                "reduce_range": cfg.reduce_range is not None, "scales": cfg.scales is not None}
    bad = [k for k, v in ort_only.items() if v]
    if bad:
        raise ConfigError(f"openvino int8 (NNCF, MIXED preset) has no option {', '.join(bad)}: those apply to the "
                          "onnx format's quantizer")


def calibration_batches(info: ModelInfo, cfg: QuantConfig) -> np.ndarray:
    """(n, 1, 3, S, S) float32 inputs, letterboxed by the pipeline's own preprocessor."""
    import torch
    from tqdm import tqdm

    from ..preprocess import CpuPreprocessor

    pre = CpuPreprocessor(info, torch.device("cpu"), torch.float32)
    out = []
    for img in tqdm(calibration_images(cfg), desc="calibrating", unit="img", leave=False):
        prepared = pre([img])
        if prepared.batch is None:
            raise ConfigError(f"calibration image cannot be read: {prepared.items[0].reason}")
        out.append(prepared.batch.numpy())
    return np.stack(out)


def quantize_ir(fp32: Path, out: Path, info: ModelInfo, cfg: QuantConfig) -> dict:
    """Quantize the IR ``fp32`` into ``out`` (ModelInfo under META_KEY, the recipe under META_KEY + ".int8")."""
    require("nncf", "nncf", extra="openvino")
    check_config(cfg)
    recipe = {"tool": "nncf", "preset": "mixed", "calib": cfg.calib, "n_calib": cfg.n_calib, "exclude": cfg.exclude,
              "extra_exclude": list(cfg.extra_exclude)}
    with tempfile.TemporaryDirectory(prefix="polydet-nncf-") as tmp:
        job = {"fp32": str(fp32), "out": str(out), "calib": str(Path(tmp) / "calib.npy"), "info": info.to_json(),
               "recipe": json.dumps(recipe, sort_keys=True)}
        np.save(job["calib"], calibration_batches(info, cfg))
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        r = subprocess.run([sys.executable, "-m", __name__, str(Path(tmp) / "job.json")], capture_output=True,
                           text=True, env={**os.environ, "NNCF_CI": "1"})
    if r.returncode:
        raise ExportError(f"NNCF quantization failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    return recipe


def _ignored(model, recipe: dict):
    import nncf

    head = [op for op in model.get_ordered_ops() if op.get_friendly_name().startswith("/det/")]
    kept = {"head": head, "none": [], "decode": [op for op in head if op.get_type_name() != "Convolution"]}
    names = [op.get_friendly_name() for op in kept[recipe["exclude"]]]
    return nncf.IgnoredScope(names=names + recipe["extra_exclude"], validate=False)


def main(argv: list[str]) -> int:
    """The child: ``python -m polydet.export.openvino_int8 JOB.json``."""
    import logging

    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.WARNING)  # this process only: its per-node INFO lines
    job = json.loads(Path(argv[0]).read_text())
    recipe = json.loads(job["recipe"])
    model = ov.Core().read_model(job["fp32"])
    data = np.load(job["calib"])
    q = nncf.quantize(model, nncf.Dataset(list(data)), preset=nncf.QuantizationPreset.MIXED, subset_size=len(data),
                      ignored_scope=_ignored(model, recipe))
    q.set_rt_info(job["info"], [META_KEY])
    q.set_rt_info(job["recipe"], [META_KEY + ".int8"])
    ov.save_model(q, job["out"], compress_to_fp16=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
