"""``polydet inspect CKPT``: what a weights file holds, so that a user sees what would be deployed before
exporting it. Reads the file the way ``load_model`` does (a training checkpoint with stand-ins, never
running it) and prints the model's facts; ``--json`` prints them as one JSON object."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import PolydetError
from .checkpoint import read_checkpoint

_WEIGHTS_FROM = {"ema": "ema (the exponential moving average of the weights: what YOLOv5 evaluates and keeps)",
                 "model": "model (no ema in the file: a stripped final checkpoint, whose model is the ema)"}


def describe(path: str, cfg: str | None = None) -> dict:
    """Facts about a weights file as plain data (``polydet inspect --json`` prints this)."""
    ck = read_checkpoint(path, cfg=cfg)
    model, info, d = ck.model, ck.info, ck.model.yaml
    rows = d["backbone"] + d["head"]
    out = {"path": str(path), **ck.facts,
           "yaml": {"depth_multiple": d["depth_multiple"], "width_multiple": d["width_multiple"],
                    "layers": len(rows), "modules": sorted({r[2] for r in rows}), "head_from": list(model.det_from)},
           "parameters": model.num_params, "nc": model.nc, "names": list(info.names), "imgsz": info.imgsz,
           "strides": [int(s) for s in model.det.strides],
           "anchors_px": [[round(v, 3) for v in level] for level in model.det.anchor_grid.view(model.det.nl, -1).tolist()]}
    out.setdefault("imgsz_from", "the checkpoint")
    return out


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def format_text(d: dict) -> str:
    y = d["yaml"]
    lines = [f"{d['path']}: {d['format']}" + (f", model class {d['class']}" if "class" in d else ""),
             f"  layout        {d['layout']}",
             f"  yaml          depth {y['depth_multiple']}, width {y['width_multiple']}, {y['layers']} layers "
             f"({', '.join(y['modules'])}), head on layers {y['head_from']}",
             f"  parameters    {d['parameters']:,}" + (f" (stored as {d['stored_dtype']}, loaded as float32)"
                                                      if d.get("stored_dtype") else ""),
             f"  classes       {d['nc']}: {', '.join(d['names'])}"
             + (f"  [{d['names_from']}]" if d.get("names_from", "the checkpoint") != "the checkpoint" else ""),
             f"  input size    {d['imgsz']} ({d['imgsz_from']})",
             f"  strides       {', '.join(map(str, d['strides']))}",
             "  anchors (px)  " + "; ".join(f"P{i + 3}/{s}: {', '.join(_fmt(v) for v in a)}"
                                            for i, (s, a) in enumerate(zip(d["strides"], d["anchors_px"])))]
    if "weights_from" in d:
        lines.append(f"  weights from  {_WEIGHTS_FROM.get(d['weights_from'], d['weights_from'])}")
    for key, label in (("epoch", "epoch"), ("best_fitness", "best fitness"), ("cfg", "cfg")):
        if d.get(key) is not None:
            note = " (training finished: optimizer stripped)" if key == "epoch" and d[key] == -1 else ""
            lines.append(f"  {label:<13} {_fmt(d[key])}{note}")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet inspect", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="polydet checkpoint, seed state_dict or YOLOv5 training checkpoint")
    p.add_argument("--cfg", help="model yaml for a plain state_dict (default: the shipped one that matches)")
    p.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        facts = describe(args.checkpoint, cfg=args.cfg)
    except PolydetError as e:
        print(f"polydet inspect: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(facts) if args.json else format_text(facts))
    return 0
