"""Build TorchServe archives of a polydet model: ``polydet archive`` (``archive.sh`` is a thin wrapper).

Each archive holds one artifact (exported from the weights, or given), the handler polydet ships and a
model-config.yaml written from :class:`Batching` (TorchServe's keys) and the service's own config
(:class:`~polydet.serving.config.ServiceConfig`, whose ``options`` are the pipeline's DetectOptions):
no default is restated here. Re-running is idempotent: an archive whose inputs are unchanged (same
weights, settings, handler, polydet version) is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import __version__, assets
from ..errors import ConfigError, PolydetError
from ..meta import Precision
from ..options import DetectOptions
from .config import ServiceConfig

RANDOM = "random"  # --weights random: a random-weight demo model (its artifact is named *_RANDOM_DEMO)

# --formats entries beyond the export table's rows: name -> (format row, precision, archive suffix).
# "int8" is `polydet quantize`'s artifact (ONNX Runtime static QDQ, export/int8.py's defaults), or the
# one `--int8 PATH` names as it is (a quantize run that passed its accuracy report).
VARIANTS: dict[str, tuple[str, Precision, str]] = {"int8": ("onnx", Precision.INT8, "_int8"),
                                                    # AOTInductor fp16: compiled on the GPU (--gpu)
                                                    "aoti_fp16": ("aoti", Precision.FP16, "_aoti_fp16")}


@dataclass(frozen=True)
class Batching:
    """TorchServe's top-level keys of model-config.yaml. Defaults measured on a 2-core machine
    (BENCHMARKS.md): one single-threaded worker per core; batches of up to 4 halve TorchServe's CPU per
    request under load; a lone request waits at most 1 ms for a partner (5 ms added 6 ms to the p50)."""

    min_workers: int = 2
    max_workers: int = 2
    batch_size: int = 4
    max_batch_delay: int = 1  # ms a worker waits to fill a batch
    response_timeout: int = 60  # s
    # deviceIds: the GPUs (visible numbering) round-robin goes over; empty: 0 .. number_of_gpu-1 (gpus.py)
    device_ids: tuple[int, ...] = ()

    def to_yaml_keys(self) -> dict:
        keys = {"minWorkers": self.min_workers, "maxWorkers": self.max_workers, "batchSize": self.batch_size,
                "maxBatchDelay": self.max_batch_delay, "responseTimeout": self.response_timeout}
        return {**keys, "deviceIds": list(self.device_ids)} if self.device_ids else keys


SERVED = ServiceConfig(torch_threads=1)  # one torch thread per worker: the workers are the parallelism


# `polydet archive --gpu`: what is exported (on the GPU) and how TorchServe batches (GPU decode is
# ServiceConfig's default). TorchScript, not aoti_fp16: the AOTInductor CUDA package compiled on the H100
# crashed (SIGSEGV) in aoti_load_package (BENCHMARKS.md, "GPU serving"). The batching is the layout measured
# served on the H100 (10 workers, batch 16, 5 ms: 891-1,045 img/s with the CPU decode); the sweep of
# scripts/gpu_serving_bench.sh (workers, batch, delay, images per request with the GPU decode) has not run yet.
GPU_FORMATS = ("torchscript",)
GPU_BATCHING = Batching(min_workers=10, max_workers=10, batch_size=16, max_batch_delay=5)


def gpu_batching(placement, base: Batching = GPU_BATCHING) -> Batching:
    """``base``'s workers on each GPU of a :class:`~polydet.serving.gpus.GpuPlacement`: minWorkers and
    maxWorkers times the GPUs (TorchServe's round-robin gives each GPU ``base``'s count), its deviceIds."""
    return dataclasses.replace(base, min_workers=placement.workers(base.min_workers),
                               max_workers=placement.workers(base.max_workers),
                               device_ids=placement.model_device_ids())


def model_config(batching: Batching, service: ServiceConfig) -> str:
    import yaml

    head = ("# Written by `polydet archive`. TorchServe reads the top-level keys; polydet's handler reads\n"
            "# `handler:` (polydet.serving.config.ServiceConfig) and refuses unknown keys there.\n")
    return head + yaml.safe_dump({**batching.to_yaml_keys(), "handler": service.to_section()}, sort_keys=False)


def fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            st = part.stat()
            part = f"{part.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class ArchiveJob:
    store: Path
    build: Path
    name: str = "polydet"
    version: str = "1.0"
    weights: str | None = None  # a checkpoint; None: the bundled weights; "random": a demo model
    formats: tuple[str, ...] = ("torchscript", "onnx")
    imgsz: int | None = None
    artifact: Path | None = None  # archive this artifact as it is instead of exporting
    int8: Path | None = None  # the "int8" format's artifact as `polydet quantize` wrote it (None: quantize here)
    batching: Batching = Batching()
    service: ServiceConfig = SERVED
    force: bool = False
    # where artifacts are exported and opened: "cuda" for those compiled for a GPU (AOTInductor), fp16 exports
    device: str = "cpu"


def weights_path(weights: str | None) -> str:
    if weights is None:  # the bundled model, unless this checkout or install lacks it
        bundled = assets.path(assets.WEIGHTS)
        if bundled.is_file():
            return str(bundled)
        print(f"polydet archive: WARNING: {bundled} not found: building a RANDOM-WEIGHT DEMO model "
              "(meaningless detections)", file=sys.stderr)
        return RANDOM
    if weights != RANDOM and not Path(weights).is_file():
        raise ConfigError(f"weights not found: {weights}")
    return weights if weights == RANDOM else str(Path(weights).resolve())


def capped(job: ArchiveJob, artifact: Path, explicit_batch: bool) -> Batching:
    """The batching an artifact can take: a fixed-batch artifact gets batchSize <= its batch."""
    from ..backends import load_backend

    fixed = load_backend(artifact, device=job.device).max_batch
    if fixed is None or job.batching.batch_size <= fixed:
        return job.batching
    if explicit_batch:
        raise ConfigError(f"{artifact.name} takes batches of exactly {fixed}: --batch-size "
                          f"{job.batching.batch_size} would be run in chunks of {fixed}; use --batch-size {fixed}")
    print(f"polydet archive: {artifact.name} takes batches of {fixed}: batchSize {fixed}", file=sys.stderr)
    return dataclasses.replace(job.batching, batch_size=fixed)


def companions(artifact: Path) -> list[Path]:
    """The files the artifact needs beside it (its format's ``companions``: an OpenVINO IR's .bin)."""
    from ..export import FORMATS

    row = next((f for f in FORMATS.values() if artifact.name.lower().endswith(f.suffix)), None)
    found = [artifact.with_name(artifact.name[: -len(row.suffix)] + s) for s in (row.companions if row else ())]
    missing = [p.name for p in found if not p.is_file()]
    if missing:
        raise ConfigError(f"{artifact.name} needs {', '.join(missing)} beside it")
    return found


def archive_one(job: ArchiveJob, mar_name: str, artifact: Path, explicit_batch: bool) -> Path:
    batching = capped(job, artifact, explicit_batch)
    build = job.build / f"{job.name}-{job.version}"
    if batching != job.batching:  # this artifact's own config, beside the shared one
        build = build / mar_name
        build.mkdir(exist_ok=True)
    config = build / "model-config.yaml"  # the name TorchServe's manifest records
    config.write_text(model_config(batching, job.service))
    cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", mar_name, "--version",
           job.version, "--serialized-file", str(artifact), "--handler", str(assets.path(assets.HANDLER)),
           "--config-file", str(config), "--export-path", str(job.store), "--force"]
    extra = companions(artifact)
    cmd += ["--extra-files", ",".join(map(str, extra))] if extra else []
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise PolydetError(f"torch-model-archiver failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    return job.store / f"{mar_name}.mar"


def build_archives(job: ArchiveJob, explicit_batch: bool = False) -> list[Path]:
    """Export (unless ``job.artifact``) and archive each format; returns the .mar paths."""
    from ..export import export

    job.store.mkdir(parents=True, exist_ok=True)
    build = job.build / f"{job.name}-{job.version}"
    build.mkdir(parents=True, exist_ok=True)
    handler = assets.path(assets.HANDLER)
    weights = None
    if job.artifact is not None:
        items = [(job.name, Path(job.artifact).resolve(), None, None)]
    else:
        weights = weights_path(job.weights) if set(job.formats) - {"int8"} or job.int8 is None else None
        items = plan(job, weights, build)
    out = []
    for mar_name, artifact, fmt, precision in items:
        mar = job.store / f"{mar_name}.mar"
        stamp = build / f"{mar_name}.fingerprint"
        source = artifact if fmt is None else (weights if weights == RANDOM else Path(weights))
        key = fingerprint(__version__, source, handler, fmt, precision, job.imgsz, job.version, job.batching,
                          job.service, artifact.name, *(companions(artifact) if fmt is None else ()))
        if not job.force and mar.is_file() and stamp.is_file() and stamp.read_text() == key:
            print(f"polydet archive: {mar} is up to date (--force rebuilds)")
            out.append(mar)
            continue
        if fmt is not None:
            imgsz = job.imgsz or (224 if weights == RANDOM else None)
            export(weights, fmt, out=artifact, imgsz=imgsz, precision=precision, device=job.device)
        out.append(archive_one(job, mar_name, artifact, explicit_batch))
        stamp.write_text(key)
        print(f"polydet archive: wrote {mar} ({mar.stat().st_size / 1e6:.1f} MB, from {source})")
    return out


def plan(job: ArchiveJob, weights: str | None, build: Path) -> list[tuple]:
    """(archive name, artifact path, format to export or None to archive as it is, precision) per format."""
    from ..export import FORMATS

    stem = f"{job.name}_RANDOM_DEMO" if weights == RANDOM else job.name
    items = []
    for f in job.formats:
        fmt, precision, suffix = VARIANTS.get(f) or (f, Precision.FP32, FORMATS[f].archive_suffix)
        if f == "int8" and job.int8 is not None:
            items.append((job.name + suffix, checked_int8(Path(job.int8)), None, None))
            continue
        part = "" if precision is Precision.FP32 else f"_{precision.value}"
        items.append((job.name + suffix, build / f"{stem}{part}{FORMATS[fmt].suffix}", fmt, precision))
    return items


def checked_int8(path: Path) -> Path:
    """``--int8 PATH``: an INT8 ONNX that says so in its metadata (what `polydet quantize` writes)."""
    from ..backends import load_backend

    if not path.is_file():
        raise ConfigError(f"--int8: no such file: {path}")
    if path.suffix.lower() != ".onnx" or load_backend(path).info.precision is not Precision.INT8:
        raise ConfigError(f"--int8: {path} is not an INT8 ONNX artifact (`polydet quantize` writes one)")
    return path.resolve()


def make_parser() -> argparse.ArgumentParser:
    from ..export import FORMATS

    d, b, o = SERVED, Batching(), DetectOptions()
    p = argparse.ArgumentParser(prog="polydet archive", description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="checkpoint (default: the bundled model), or `random` for a demo")
    p.add_argument("--artifact", type=Path, help="archive this exported artifact as it is (any backend's suffix)")
    p.add_argument("--store", type=Path, default=Path("model_store"), help="model store (default ./model_store)")
    p.add_argument("--build", type=Path, default=Path("build/archive"), help="work folder (default ./build/archive)")
    p.add_argument("--formats", default=" ".join(ArchiveJob.formats), help=f"formats to export, space- or comma-separated "
                   f"(default \"%(default)s\"; known: {', '.join([*FORMATS, *VARIANTS])}; int8: ONNX Runtime INT8, "
                   "polydet_int8.mar)")
    p.add_argument("--int8", type=Path, help="the int8 archive's artifact: an INT8 ONNX from `polydet quantize` "
                   "(default: quantized here with its defaults)")
    p.add_argument("--name", default="polydet")
    p.add_argument("--version", default="1.0")
    p.add_argument("--imgsz", type=int, help="input size (default: the checkpoint's)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--gpu", action="store_true", help="for CUDA workers: export on the GPU (cuda), formats "
                   f"{' '.join(GPU_FORMATS)} unless --formats says, batching {GPU_BATCHING} unless its options say")
    p.add_argument("--gpus", help="with --gpu: the GPUs the workers go on: all (default: every "
                   "visible GPU, CUDA_VISIBLE_DEVICES respected), N (the first N) or indices 0,2 (one: 1,); "
                   "workers = the one-GPU count x GPUs; serve with number_of_gpu = `polydet serve --gpus`'s")
    g = p.add_argument_group("model-config.yaml: TorchServe")
    for flag, field, help_ in (("--batch-size", "batch_size", ""), ("--max-batch-delay", "max_batch_delay", "ms"),
                               ("--min-workers", "min_workers", ""), ("--max-workers", "max_workers", ""),
                               ("--response-timeout", "response_timeout", "s")):
        g.add_argument(flag, type=int, dest=field, help=f"{help_} (default {getattr(b, field)})".strip())
    g = p.add_argument_group("model-config.yaml: handler")
    g.add_argument("--conf", type=float, default=o.conf)
    g.add_argument("--iou", type=float, default=o.iou)
    g.add_argument("--max-det", type=int, default=o.max_det)
    g.add_argument("--multi-label", type=_bool, default=o.multi_label, metavar="true|false")
    g.add_argument("--agnostic", type=_bool, default=o.agnostic, metavar="true|false")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels)
    g.add_argument("--max-decode-bytes", type=int, default=d.max_decode_bytes,
                   help="memory one image's decode may take (default %(default)s)")
    g.add_argument("--torch-threads", type=int, default=d.torch_threads)
    g.add_argument("--pin-cpu", type=_bool, default=d.pin_cpu, metavar="true|false",
                   help="each CPU worker pins itself to a CPU no other worker holds (default %(default)s)")
    return p


def placement_of(spec: str, environ=None, cuda_count=None):
    """``--gpus SPEC`` against the GPUs visible here (:mod:`polydet.serving.gpus`)."""
    from .gpus import parse_gpus, visible_gpus

    return parse_gpus(spec, visible_gpus(environ, cuda_count))


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


def main(argv: list[str] | None = None) -> int:
    from ..export import FORMATS

    args = make_parser().parse_args(argv)
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("polydet archive: error: --gpu compiles for this machine's GPU and there is none (CUDA is not "
                  "available); run it on the serving host", file=sys.stderr)
            return 2
        if args.formats == " ".join(ArchiveJob.formats):
            args.formats = " ".join(GPU_FORMATS)
    if args.gpus is not None and not args.gpu:
        print("polydet archive: --gpus places CUDA workers: add --gpu", file=sys.stderr)
        return 2
    try:
        base = gpu_batching(placement_of(args.gpus or "all")) if args.gpu else Batching()
    except PolydetError as e:
        print(f"polydet archive: error: {e}", file=sys.stderr)
        return 2
    formats = tuple(f for f in args.formats.replace(",", " ").split() if f)
    unknown = [f for f in formats if f not in FORMATS and f not in VARIANTS]
    if unknown:
        print(f"polydet archive: unknown format(s) {unknown}; known: {', '.join([*FORMATS, *VARIANTS])}",
              file=sys.stderr)
        return 2
    if args.int8 is not None and "int8" not in formats:
        print("polydet archive: --int8 is the int8 archive's artifact: add int8 to --formats", file=sys.stderr)
        return 2
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Batching)
             if getattr(args, f.name, None) is not None}  # deviceIds come from --gpus only
    try:
        options = DetectOptions.from_dict({"conf": args.conf, "iou": args.iou, "max_det": args.max_det,
                                           "multi_label": args.multi_label, "agnostic": args.agnostic})
        service = ServiceConfig.from_section({**SERVED.to_section(), "options": dataclasses.asdict(options),
                                              "max_pixels": args.max_pixels, "max_decode_bytes": args.max_decode_bytes,
                                              "torch_threads": args.torch_threads, "pin_cpu": args.pin_cpu})
        job = ArchiveJob(args.store.resolve(), args.build.resolve(), args.name, args.version, args.weights, formats,
                         args.imgsz, args.artifact, args.int8,
                         dataclasses.replace(base, **given), service, args.force,
                         device="cuda" if args.gpu else "cpu")
        build_archives(job, explicit_batch="batch_size" in given)
    except PolydetError as e:
        print(f"polydet archive: error: {e}", file=sys.stderr)
        return 2
    return 0
