"""Two artifacts side by side: accuracy on a labelled folder, output differences, speed in one run.

``compare_artifacts(ref, cand, data)`` is what ``polydet quantize --data`` reports (fp32 vs INT8), and
works for any two artifacts the package opens.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

CONFIDENT = 0.25  # rows whose reference objectness is at least this are the ones NMS would keep


def load_batch(data: str | Path, info, n: int) -> torch.Tensor:
    """The first ``n`` images of a folder, letterboxed as the pipeline does: ``(n, 3, S, S)`` float."""
    from ..evaluate import IMAGE_SUFFIXES
    from ..preprocess import CpuPreprocessor

    files = sorted(p for p in Path(data).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
    if not files:
        raise FileNotFoundError(f"no images in {data}")
    return CpuPreprocessor(info, "cpu", torch.float32)([p.read_bytes() for p in files]).batch


def output_diffs(ref: torch.Tensor, out: torch.Tensor) -> dict:
    """Max abs differences of two head outputs ``(B, N, 9+nc)``: all rows, and rows the reference is
    confident about (objectness >= CONFIDENT), where a difference changes detections."""
    d = (out.float() - ref.float()).abs()
    conf = ref[..., 8] >= CONFIDENT
    pick = d[conf] if conf.any() else d.new_zeros((0, d.shape[-1]))
    return {"corners_px": float(d[..., :8].max()), "scores": float(d[..., 8:].max()),
            "confident_rows": int(conf.sum()),
            "confident_corners_px": float(pick[:, :8].max()) if len(pick) else 0.0,
            "confident_scores": float(pick[:, 8:].max()) if len(pick) else 0.0}


def _median_ms(backend, x: torch.Tensor, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        backend(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def measure_speed(backends: dict, batch: torch.Tensor, threads: int = 1, rounds: int = 5, iters: int = 10) -> dict:
    """Latency (batch 1, ms) and throughput (batch 8, img/s) of each backend, measured interleaved: round r
    runs every backend in turn, so drifts of the machine hit all of them alike. Medians over rounds."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)  # ONNX Runtime's backend takes its thread count from torch's
    try:
        x1, x8 = batch[:1], batch[:8].repeat(-(-8 // len(batch)), 1, 1, 1)[:8]
        for b in backends.values():  # warm up (first runs allocate)
            b(x1), b(x8)
        lat = {k: [] for k in backends}
        thr = {k: [] for k in backends}
        for _ in range(rounds):
            for k, b in backends.items():
                lat[k].append(_median_ms(b, x1, iters))
                thr[k].append(8e3 / _median_ms(b, x8, max(2, iters // 4)))
    finally:
        torch.set_num_threads(saved)
    return {k: {"ms_batch1": statistics.median(lat[k]), "img_s_batch8": statistics.median(thr[k])} for k in backends}


def cpu_facts() -> dict:
    import platform

    from ..export.int8 import cpu_has_vnni

    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": model, "vnni": cpu_has_vnni()}


def compare_artifacts(ref: str | Path, cand: str | Path, data: str | Path, threads: int = 1, speed: bool = True,
                      n_diff: int = 16, rounds: int = 5) -> dict:
    """Accuracy (``polydet.evaluate``), output differences on ``n_diff`` images of ``data`` and speed of
    ``cand`` against ``ref``. Deltas are cand - ref (mAP in [0, 1])."""
    from ..backends import load_backend
    from ..evaluate import evaluate_artifact

    r, c = evaluate_artifact(ref, data), evaluate_artifact(cand, data)
    backends = {"ref": load_backend(ref), "cand": load_backend(cand)}
    batch = load_batch(data, backends["ref"].info, n_diff)
    with torch.inference_mode():
        diffs = output_diffs(backends["ref"](batch), backends["cand"](batch))
    per_class = {name: {"ref_ap50": r["per_class"][name]["ap50"], "cand_ap50": pc["ap50"],
                        "delta_ap50": pc["ap50"] - r["per_class"][name]["ap50"],
                        "delta_ap": pc["ap"] - r["per_class"][name]["ap"]} for name, pc in c["per_class"].items()}
    out = {"ref": {"model": str(ref), "map50": r["map50"], "map": r["map"]},
           "cand": {"model": str(cand), "map50": c["map50"], "map": c["map"]},
           "delta_map50": c["map50"] - r["map50"], "delta_map": c["map"] - r["map"], "per_class": per_class,
           "output_diffs": diffs, "data": str(data), "n_images": r["n_images"], "cpu": cpu_facts()}
    if speed:
        s = measure_speed(backends, batch, threads=threads, rounds=rounds)
        out["speed"] = {**s, "threads": threads,
                        "latency_ratio": s["cand"]["ms_batch1"] / s["ref"]["ms_batch1"],
                        "throughput_ratio": s["cand"]["img_s_batch8"] / s["ref"]["img_s_batch8"]}
    return out


def format_report(rep: dict) -> str:
    r, c = rep["ref"], rep["cand"]
    lines = [f"{'':>6} {'mAP50':>8} {'mAP50-95':>9}  model  ({rep['n_images']} images of {rep['data']})",
             f"{'ref':>6} {r['map50']:8.4f} {r['map']:9.4f}  {r['model']}",
             f"{'cand':>6} {c['map50']:8.4f} {c['map']:9.4f}  {c['model']}",
             f"{'delta':>6} {rep['delta_map50']:+8.4f} {rep['delta_map']:+9.4f}"]
    for name, pc in rep["per_class"].items():
        lines.append(f"  class {name:>8}: AP50 {pc['ref_ap50']:.4f} -> {pc['cand_ap50']:.4f} ({pc['delta_ap50']:+.4f}),"
                     f" AP50-95 {pc['delta_ap']:+.4f}")
    d = rep["output_diffs"]
    lines.append(f"output max |diff|: corners {d['corners_px']:.3g} px, scores {d['scores']:.3g}; on the "
                 f"{d['confident_rows']} rows with ref obj >= {CONFIDENT}: corners {d['confident_corners_px']:.3g} px, "
                 f"scores {d['confident_scores']:.3g}")
    cpu = rep["cpu"]
    lines.append(f"cpu: {cpu['cpu'] or cpu['machine']} (VNNI: {'yes' if cpu['vnni'] else 'no'})")
    if "speed" in rep:
        s = rep["speed"]
        lines.append(f"speed ({s['threads']} thread(s), measured interleaved): batch 1 {s['ref']['ms_batch1']:.2f} -> "
                     f"{s['cand']['ms_batch1']:.2f} ms (x{s['latency_ratio']:.2f}); batch 8 "
                     f"{s['ref']['img_s_batch8']:.1f} -> {s['cand']['img_s_batch8']:.1f} img/s (x{s['throughput_ratio']:.2f})")
    return "\n".join(lines)
