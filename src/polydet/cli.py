"""``polydet`` command line: each subcommand is a parser plus a call into the library.

Subcommands that live elsewhere are imported only when used, so ``polydet predict`` does not import
TorchServe, grpc or the training code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# subcommand -> (module, help). Each module has main(argv) -> int.
EXTERNAL = {
    "train": ("polydet.train.trainer", "train a polygon YOLOv5 (synthetic main-area data by default)"),
    "eval": ("polydet.evaluate", "mAP50 / mAP50-95 of any artifact on a labelled folder"),
    "client": ("polydet.serving.commands", "REST / gRPC inference client for a running TorchServe"),
    "manage": ("polydet.serving.commands", "TorchServe management: register, unregister, scale, list"),
    "archive": ("polydet.serving.archive", "build TorchServe archives (.mar) of a model"),
    "serve": ("polydet.serving.commands", "build archives, start TorchServe, wait READY, send a sample"),
    "stop": ("polydet.serving.commands", "stop the TorchServe started by `polydet serve`"),
    "bench": ("polydet.bench", "benchmarks: pipeline stages, served vs in-process, NMS"),
    "inspect": ("polydet.model.summary", "what a checkpoint holds: layout, classes, input size, anchors, epoch"),
    "quantize": ("polydet.optimize.quantize", "INT8 ONNX (static QDQ) with an accuracy and speed report vs fp32"),
    "debug": ("polydet.optimize.debug", "compare two artifacts layer by layer: where does the error start"),
    "qat": ("polydet.optimize.qat", "quantization-aware training: fake-quant fine-tuning -> a QDQ ONNX (INT8)"),
    "doctor": ("polydet.doctor", "installed runtimes and converters vs the pinned versions, with the fix for each"),
    "kserve-layout": ("polydet.serving.kserve_layout", "TorchServe-in-KServe layout: config/ + model-store/ (kservev2)"),
    "front": ("polydet.fronts.launch", "serve over the Open Inference Protocol with KServe or Triton (own venv, built once)"),
}
DATA_MODULE = "polydet.data.synth"
# `polydet data SUB ...` -> the module whose main() takes the rest
DATA_MODULES = {"synth": DATA_MODULE, "sources": "polydet.data.debsources", "heldout": "polydet.data.heldout",
                "report": "polydet.data.report"}


def _add_threshold_args(p: argparse.ArgumentParser) -> None:
    from .options import DetectOptions

    d = DetectOptions()
    p.add_argument("--conf", type=float, default=d.conf, help="confidence threshold (default %(default)s)")
    p.add_argument("--iou", type=float, default=d.iou, help="NMS polygon IoU threshold (default %(default)s)")
    p.add_argument("--max-det", type=int, default=d.max_det, help="max detections per image (default %(default)s)")
    p.add_argument("--multi-label", action="store_true", help="one detection per class above --conf")
    p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polydet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="detect polygons in images")
    p.add_argument("--model", required=True, help="artifact: .torchscript/.pt, .onnx, or a checkpoint")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--json", action="store_true", help="print one output-contract JSON object per image")
    p.add_argument("--draw", metavar="OUTDIR", help="write images with the detections drawn")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--half", action="store_true", help="fp16 (CUDA only)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    _add_threshold_args(p)

    from .export.formats import FORMATS, PASSES
    from .meta import Precision

    p = sub.add_parser("export", help=f"export weights to {' or '.join(FORMATS)} (verified against eager)")
    p.add_argument("--weights", required=True, help="checkpoint, seed state_dict, or random[:cfg] for a demo")
    p.add_argument("--format", choices=list(FORMATS), default="torchscript")
    p.add_argument("--out", help="output path (default: <weights stem>_<imgsz>[_fp16].<format suffix>)")
    p.add_argument("--imgsz", type=int, help="square input size (default: the checkpoint's, else 224)")
    p.add_argument("--precision", choices=[q.value for q in Precision],
                   help="artifact precision (default: the format's first, fp32 (rknn: fp16); each format supports "
                        "some: `polydet.export.FORMATS`; fp16 needs --device cuda where the artifact takes fp16 input)")
    p.add_argument("--half", action="store_true", help="deprecated: --precision fp16")
    p.add_argument("--passes", type=lambda s: tuple(filter(None, s.split(","))), default=(),
                   help=f"comma-separated graph passes, run in order (known: {', '.join(PASSES) or 'none yet'})")
    p.add_argument("--calib", help="int8: calibration image folder (default: synthetic; see `polydet quantize`)")
    targets = sorted({t for f in FORMATS.values() for t in f.targets})
    p.add_argument("--target", choices=targets or None,
                   help="hardware the format compiles for (rknn: rk3588; default: the format's first)")
    p.add_argument("--dynamic", action="store_true", help="any stride-aligned H x W (rectangular letterbox)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--device", default="cpu", help="device to trace on (artifacts run on any device)")
    p.add_argument("--cfg", help="model yaml for a seed state_dict (default: the shipped one that matches)")
    p.add_argument("--names", help="comma-separated class names (default: from the checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights")

    p = sub.add_parser("data", help="datasets: `polydet data synth OUT --n N --seed S`, `data sources`, `data heldout`")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    for name, (_, help_) in EXTERNAL.items():
        q = sub.add_parser(name, help=help_, add_help=False)
        q.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _predict(args) -> int:
    from .pipeline import Detector, DetectOptions
    from .results import ImageError

    opts = DetectOptions.from_dict({"conf": args.conf, "iou": args.iou, "max_det": args.max_det,
                                    "multi_label": args.multi_label, "agnostic": args.agnostic})
    det = Detector.from_artifact(args.model, device=args.device, precision="fp16" if args.half else None,
                                 options=opts)
    outdir = Path(args.draw) if args.draw else None
    if outdir:
        outdir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for start in range(0, len(args.images), args.batch):
        paths, datas = [], []
        for path in args.images[start : start + args.batch]:
            try:
                datas.append(Path(path).read_bytes())
                paths.append(path)
            except OSError as e:
                print(f"{path}: {e}", file=sys.stderr)
                failed += 1
        batch = det.detect(datas) if datas else []
        for path, res, rgb in zip(paths, batch, batch.pixels if datas else []):
            if isinstance(res, ImageError):  # one bad file fails only itself
                print(f"{path}: {res.reason}", file=sys.stderr)
                failed += 1
                continue
            _print_result(path, res, args.json)
            if outdir:
                import cv2

                from .draw import draw_detections

                cv2.imwrite(str(outdir / (Path(path).stem + ".jpg")), draw_detections(rgb[..., ::-1], res))
    return 1 if failed else 0


def _print_result(path: str, res, as_json: bool) -> None:
    d = res.to_dict()  # the output contract's rounding, for the summary line too
    if as_json:
        print(json.dumps({"image": path, **d}))
        return
    summary = ", ".join(f"{x['class_name']} {x['score']:.2f}" for x in d["detections"]) or "nothing"
    print(f"{path} ({res.width}x{res.height}): {summary}")


def _export(args) -> int:
    from .errors import ConfigError
    from .export import export

    names = args.names.split(",") if args.names else None
    precision = args.precision  # None: the format's default (its first precision: polydet.export.FORMATS)
    if args.half:
        print("polydet export: --half is deprecated, use --precision fp16", file=sys.stderr)
        if args.precision not in (None, "fp16"):
            raise ConfigError(f"--half conflicts with --precision {args.precision}")
        precision = "fp16"
    out, diff = export(args.weights, args.format, out=args.out, imgsz=args.imgsz, precision=precision,
                       dynamic=args.dynamic, opset=args.opset, device=args.device, cfg=args.cfg, names=names,
                       seed=args.seed, passes=args.passes, quant={"calib": args.calib} if args.calib else None,
                       target=args.target)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    print(f"parity vs eager model: max |diff| corners {diff['corners_px']:.3g} px, scores {diff['scores']:.3g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .errors import PolydetError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    if argv and argv[0] in EXTERNAL:  # hand the rest to the owning module untouched (its own --help)
        mod = importlib.import_module(EXTERNAL[argv[0]][0])
        entry = getattr(mod, f"{argv[0]}_main", None) or mod.main
        return entry(argv[1:]) or 0
    if len(argv) >= 2 and argv[0] == "data" and argv[1] in DATA_MODULES:
        return importlib.import_module(DATA_MODULES[argv[1]]).main(argv[2:]) or 0
    args = parser.parse_args(argv)
    if args.command == "data":
        parser.error(f"data: subcommands are {', '.join(DATA_MODULES)} (e.g. polydet data synth OUT --n N --seed S)")
    try:
        return {"predict": _predict, "export": _export}[args.command](args)
    except PolydetError as e:
        print(f"polydet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
