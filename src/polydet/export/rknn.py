"""RKNN exporter (Rockchip NPU, RK3588): the split-output ONNX, converted by rknn-toolkit2 in its own venv.

rknn-toolkit2 pins onnx/torch/numpy/protobuf below polydet's, so it never runs in polydet's environment:
``RKNN_ENV`` (polydet.envs) builds a venv for it once, and the toolkit is only ever called through
``python -m polydet.export.rknn_tool`` run with that venv's python (this module and the backend never
import ``rknn``).

The ONNX handed to the toolkit has the output split into ``coords`` (B, N, 8) and ``scores`` (B, N, 1+nc)
(``SplitDetect``): the one mixed tensor shares a single int8 scale between corner pixels (0..imgsz) and
probabilities (0..1), which wipes out the scores (issue 13: -0.13 mAP50 mixed, -0.002 split). The backend
concatenates the two back into the pipeline's layout. Precisions: fp16 (the NPU has no fp32: a build without
quantization computes in fp16; input stays float32) and int8 (the toolkit's asymmetric per-channel
quantization, calibrated on ``QuantConfig``'s images letterboxed by the pipeline; nothing kept in float).
Files: ``NAME.rknn`` (what a board loads), ``NAME.json`` (ModelInfo) and ``NAME.split.onnx`` (the graph the
toolkit built from, with the build recipe in its metadata: the PC simulator cannot run a loaded .rknn, only
a model it has just built, so the simulator rebuilds from these; see export/rknn_sim.py).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from .. import envs
from ..backends.base import META_KEY
from ..errors import ConfigError, ExportError, ModelLoadError, require
from ..meta import ModelInfo, Precision
from .common import ExportJob

TOOLKIT = "rknn-toolkit2==2.5.0"
SPLIT_LAYOUT = "polygon-yolov5/v1-split: coords (B, N, 8) letterboxed pixels; scores (B, N, 1+nc) [obj, cls...]"
RECIPE_KEY = META_KEY + ".rknn"  # the split ONNX's metadata key holding the build recipe

# Installed with --no-deps: the toolkit's own requirements ask torch<=2.4, which PyPI has only as a CUDA build
# (~800 MB, plus ~2.5 GB of nvidia-* libraries) and download.pytorch.org's CPU builds are not reachable here.
# The toolkit imports torch at import time but its ONNX path never calls it: checked with torch 2.13.0 (the
# project's CPU torch, which pip's configuration must provide as for polydet's own venv and the KServe one:
# find-links, or --extra-index-url .../whl/cpu) building fp16 and int8 for rk3588 and running them in the
# simulator. Every other pin is the newest the toolkit's Requires-Dist allows, checked
# together the same way.
RKNN_REQUIREMENTS = (
    TOOLKIT,  # the version checked (fp16/int8 rk3588 builds, simulator parity: tests/integration/test_rknn.py)
    "numpy==1.26.4",  # toolkit: numpy<=1.26.4
    "onnx==1.16.1",  # toolkit: 1.16.1 <= onnx <= 1.18.0; 1.16.1 is the version checked
    "onnxruntime==1.19.2",  # the simulator runs on it; works with numpy 1.26
    "protobuf==4.25.4",  # toolkit: protobuf <= 4.25.4
    "scipy==1.13.1",  # the last scipy built against numpy 1.x that the toolkit was checked with
    "opencv-python-headless==4.10.0.84",  # the toolkit asks opencv-python; headless has the same cv2, no X11
    "fast-histogram==0.14", "psutil==7.2.2", "ruamel.yaml==0.19.1", "tqdm==4.70.1",  # toolkit deps, as checked
    "torch==2.13.0",  # see above; torch's own dependencies follow (--no-deps)
    "typing_extensions==4.16.0", "sympy==1.14.0", "mpmath==1.4.1", "networkx==3.6.1", "jinja2==3.1.6",
    "markupsafe==3.0.4", "filelock==4.3.2", "fsspec==2026.9.0",
)
RKNN_ENV = envs.EnvSpec("rknn", RKNN_REQUIREMENTS, pip_args=("--no-deps",))
TOOL = "polydet.export.rknn_tool"


class SplitDetect(torch.nn.Module):
    """The polygon head's eval decode with corners and scores kept apart: ``(coords (B,N,8), scores (B,N,1+nc))``,
    the same rows as ``PolygonDetect``'s ``(B, N, 9+nc)`` split at column 8. It repeats ``PolygonDetect._decode``
    without the final cat (slicing the cat's result would leave a mixed tensor, one int8 scale, in the graph);
    the export's parity check and tests/integration/test_rknn.py hold the two equal."""

    def __init__(self, det):
        super().__init__()
        self.det = det

    def forward(self, xs):
        d, coords, scores = self.det, [], []
        for i in range(d.nl):
            b, _, ny, nx = xs[i].shape
            p = d.m[i](xs[i]).view(b, d.na, d.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            xy, conf = p.split((8, d.nc + 1), -1)
            ones = torch.ones_like(xy[..., :1])
            grid = torch.cat((ones.cumsum(3) - 1, ones.cumsum(2) - 1), -1).repeat(1, 1, 1, 1, 4)
            coords.append(((xy + grid) * d.strides[i]).view(b, -1, 8))
            scores.append(conf.sigmoid().view(b, -1, d.nc + 1))
        return torch.cat(coords, 1), torch.cat(scores, 1)


def split_path(artifact: Path) -> Path:
    return Path(artifact).with_suffix(".split.onnx")


def export_split_onnx(model, info: ModelInfo, out: Path, recipe: dict) -> None:
    """Trace ``model`` (fused, fp32) with ``SplitDetect`` as its head at batch 1 into ``out``; ModelInfo (with
    ``SPLIT_LAYOUT``, so ONNX Runtime's backend refuses it) and ``recipe`` go into its metadata."""
    import copy
    import warnings

    onnx = require("onnx", "onnx", extra="onnx")
    split = copy.deepcopy(model).float().eval()
    split.det = SplitDetect(split.det)
    x = torch.zeros(1, 3, info.imgsz, info.imgsz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(split, (x,), str(out), opset_version=17, input_names=["images"],
                          output_names=["coords", "scores"], do_constant_folding=True, dynamo=False)
    m = onnx.load(str(out))
    del m.metadata_props[:]
    m.metadata_props.add(key=META_KEY, value=dataclasses.replace(info, layout=SPLIT_LAYOUT).to_json())
    m.metadata_props.add(key=RECIPE_KEY, value=json.dumps(recipe, sort_keys=True))
    onnx.save(m, str(out))


def check_quant(job: ExportJob):
    """The QuantConfig of an int8 job (None otherwise); refuses ONNX Runtime options the toolkit has no
    equivalent for (never silently ignored)."""
    if job.info.precision is not Precision.INT8:
        return None
    from .int8 import QuantConfig

    cfg = job.quant or QuantConfig()
    ort_only = {"method": cfg.method != "minmax", "per_channel": not cfg.per_channel,
                "reduce_range": cfg.reduce_range is not None, "scales": cfg.scales is not None,
                "exclude": cfg.exclude != "head", "extra_exclude": bool(cfg.extra_exclude)}
    bad = [k for k, v in ort_only.items() if v]
    if bad:
        raise ConfigError(f"rknn int8 (the toolkit's per-channel quantization of the split-output graph, nothing "
                          f"kept in float) has no option {', '.join(bad)}: those apply to the onnx format's quantizer")
    return cfg


def recipe_of(target: str, cfg) -> dict:
    r = {"target": target, "toolkit": TOOLKIT, "int8": cfg is not None, "outputs": ["coords", "scores"]}
    if cfg is not None:
        r.update(calib=cfg.calib, n_calib=cfg.n_calib, calib_seed=cfg.calib_seed, quantized_algorithm="normal",
                 quantized_method="channel")
    return r


def write_dataset(info: ModelInfo, recipe: dict, where: Path) -> Path:
    """The calibration images of ``recipe`` as (1,3,S,S) float32 .npy files and the list file the toolkit reads."""
    from .int8 import QuantConfig
    from .openvino_int8 import calibration_batches

    cfg = QuantConfig(calib=recipe["calib"], n_calib=recipe["n_calib"], calib_seed=recipe["calib_seed"])
    lines = []
    for i, batch in enumerate(calibration_batches(info, cfg)):
        f = where / f"calib{i:04d}.npy"
        np.save(f, batch.astype(np.float32))
        lines.append(str(f))
    listing = where / "dataset.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def tool_job(split: Path, recipe: dict, info: ModelInfo, tmp: Path, **extra) -> Path:
    """The JSON job ``rknn_tool`` reads (int8: the calibration set written under ``tmp``)."""
    job = {"onnx": str(split), "target": recipe["target"], "imgsz": info.imgsz, "int8": recipe["int8"], **extra}
    if recipe["int8"]:
        job["dataset"] = str(write_dataset(info, recipe, tmp))
    path = tmp / "job.json"
    path.write_text(json.dumps(job))
    return path


def export_rknn(job: ExportJob) -> None:
    if job.out.suffix.lower() != ".rknn":
        raise ExportError(f"an RKNN model is written as NAME.rknn, not {job.out.name}")
    if job.info.dynamic:
        raise ConfigError("rknn artifacts have a fixed input shape: export without --dynamic")
    from .formats import FORMATS

    recipe = recipe_of(job.target or FORMATS["rknn"].targets[0], check_quant(job))
    split = split_path(job.out)
    export_split_onnx(job.model, job.info, split, recipe)
    with tempfile.TemporaryDirectory(prefix="polydet-rknn-") as tmp:
        spec = tool_job(split, recipe, job.info, Path(tmp), out=str(job.out))
        r = envs.run(RKNN_ENV, ["-m", TOOL, "build", str(spec)], capture_output=True, text=True)
    if r.returncode or not job.out.is_file():
        raise ExportError(f"rknn-toolkit2 could not build {job.out.name} ({r.returncode}): "
                          f"{(r.stdout + r.stderr)[-2000:]}")
    job.out.with_suffix(".json").write_text(job.info.to_json())


def read_recipe(split: Path) -> dict:
    """The build recipe recorded in a split ONNX (``export_rknn`` wrote it)."""
    onnx = require("onnx", "onnx", extra="onnx")
    if not split.is_file():
        raise ModelLoadError(f"the RKNN simulator rebuilds from {split.name}, which `polydet export --format rknn` "
                             "writes beside the .rknn; it is missing")
    meta = {p.key: p.value for p in onnx.load(str(split), load_external_data=False).metadata_props}
    if RECIPE_KEY not in meta:
        raise ModelLoadError(f"{split} holds no RKNN build recipe ({RECIPE_KEY}): re-export it")
    return json.loads(meta[RECIPE_KEY])

