"""``polydet quantize``: weights -> an INT8 ONNX (ONNX Runtime static QDQ), with an accuracy and speed report
against the fp32 ONNX of the same weights, and a refusal when the mAP50 drop exceeds a budget.

    polydet quantize --weights best.pt --calib CALIB_DIR --data VAL_DIR --max-drop 1.0

Exit status: 0 written (and within budget), 2 a usage/config error, 3 over the budget (the artifact is
left for ``polydet debug``, the report says why it was refused).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..export.int8 import EXCLUDES, METHODS, SYNTH, QuantConfig

OVER_BUDGET = 3


REDUCE_RANGE = {"auto": None, "on": True, "off": False}  # --reduce-range -> QuantConfig/QatConfig.reduce_range


def model_parser(prog: str, description: str, out_help: str) -> argparse.ArgumentParser:
    """A parser with the model arguments `polydet quantize` and `polydet qat` share, and --reduce-range."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--weights", required=True, help="checkpoint, seed state_dict, or random[:cfg]")
    p.add_argument("--imgsz", type=int, help="square input size (default: the checkpoint's)")
    p.add_argument("--out", type=Path, help=out_help)
    p.add_argument("--cfg", help="model yaml for a seed state_dict")
    p.add_argument("--reduce-range", choices=tuple(REDUCE_RANGE), default="auto",
                   help="7-bit weights: auto = on unless the CPU has VNNI (U8S8 saturation otherwise)")
    return p


def make_parser() -> argparse.ArgumentParser:
    d = QuantConfig()
    p = model_parser("polydet quantize", __doc__.splitlines()[0], "INT8 artifact (default <stem>_<imgsz>_int8.onnx)")
    p.add_argument("--calib", default=SYNTH, help="calibration image folder, or 'synth' (default: synthetic "
                   f"scenes, seed {d.calib_seed}, never a validation or training seed)")
    p.add_argument("--n-calib", type=int, default=d.n_calib, help="calibration images (default %(default)s)")
    p.add_argument("--method", choices=METHODS, default=d.method, help="activation ranges (default %(default)s)")
    p.add_argument("--exclude", choices=EXCLUDES, default=d.exclude,
                   help="kept in float: the detection head (default), its decode only, or nothing")
    p.add_argument("--keep-float", default="", help="comma-separated node names also kept in float")
    p.add_argument("--per-tensor", action="store_true", help="one scale per weight tensor (default per channel)")
    p.add_argument("--scales", help='custom scales: JSON {tensor: {"min": a, "max": b} | {"scale": s, "zero_point": z}}')
    p.add_argument("--data", help="labelled folder (NAME.jpg + NAME.txt): write the accuracy and speed report")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="refuse (exit 3) when mAP50 drops by more than this many points (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="threads for the speed comparison (default 1)")
    p.add_argument("--no-speed", action="store_true", help="accuracy only")
    p.add_argument("--report", type=Path, help="also write the report as JSON here")
    return p


def config_from_args(args) -> QuantConfig:
    return QuantConfig(calib=args.calib, n_calib=args.n_calib, method=args.method, per_channel=not args.per_tensor,
                       reduce_range=REDUCE_RANGE[args.reduce_range], exclude=args.exclude, scales=args.scales,
                       extra_exclude=tuple(filter(None, args.keep_float.split(","))))


def quantize(args) -> int:
    from ..export import export

    cfg = config_from_args(args)
    out, diff = export(args.weights, "onnx", out=args.out, imgsz=args.imgsz, precision="int8", cfg=args.cfg,
                       quant=cfg)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    print(f"parity vs eager model on the fixed inputs: max |diff| corners {diff['corners_px']:.3g} px, "
          f"scores {diff['scores']:.3g}")
    if not args.data:
        return 0
    from .report import compare_artifacts, format_report

    ref = out.with_name(out.stem.removesuffix("_int8") + "_fp32ref.onnx")
    export(args.weights, "onnx", out=ref, imgsz=args.imgsz, cfg=args.cfg)
    rep = compare_artifacts(ref, out, args.data, threads=args.threads, speed=not args.no_speed)
    rep["recipe"] = cfg.recipe(cfg.reduce_range if cfg.reduce_range is not None else not rep["cpu"]["vnni"])
    drop = 0.0 - rep["delta_map50"] * 100  # 0.0 - : no "-0.00"
    rep["max_drop"], rep["refused"] = args.max_drop, drop > args.max_drop
    print(format_report(rep))
    if args.report:
        args.report.write_text(json.dumps(rep, indent=2))
    if rep["refused"]:
        print(f"polydet quantize: refused: mAP50 drops {drop:.2f} points > --max-drop {args.max_drop} "
              f"({out} left for `polydet debug {ref} {out} --images {args.data}`)", file=sys.stderr)
        return OVER_BUDGET
    print(f"mAP50 change {-drop:+.2f} points: within --max-drop {args.max_drop}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..errors import PolydetError

    args = make_parser().parse_args(argv)
    try:
        return quantize(args)
    except PolydetError as e:
        print(f"polydet quantize: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
