"""PNG plots of the benchmark results (matplotlib, Agg backend; nothing is shown on screen).

Each function takes the rows a benchmark wrote (lists of dicts, as in its CSV/JSON) and returns the PNG
path. ``python -m polydet.bench.plots RESULTS_DIR`` redraws every plot whose data file is there.
"""

from __future__ import annotations

import csv
import json
import sys
import textwrap
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display; and never a GUI backend inside a benchmark
    import matplotlib.pyplot as plt

    return plt


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def plot_load(rows: list[dict], png: str | Path, title: str = "") -> Path:
    """Throughput and p50/p95/p99 latency vs concurrent users, one line per protocol."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for proto in dict.fromkeys(r["protocol"] for r in rows):
        rs = sorted((r for r in rows if r["protocol"] == proto), key=lambda r: _num(r["users"]))
        u = [_num(r["users"]) for r in rs]
        a.plot(u, [_num(r["req_per_s"]) for r in rs], "o-", label=proto)
        for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
            b.plot(u, [_num(r[f"{q}_ms"]) for r in rs], style, label=f"{proto} {q}")
    for ax, ylabel in ((a, "requests / s"), (b, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent users")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    b.set_yscale("log")
    fig.suptitle(textwrap.fill(title or "load test", 110), fontsize=9)
    return _save(fig, png)


def plot_compare(rows: list[dict], png: str | Path, title: str = "") -> Path:
    """Bars: throughput and p50 latency at concurrency 1 of each way (in-process, REST, gRPC, naive);
    the median over rounds where a way has several rows."""
    import statistics

    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    med = []
    for key in dict.fromkeys((r["way"], r["metric"]) for r in rows):
        rs = [r for r in rows if (r["way"], r["metric"]) == key]
        med.append({"way": key[0], "metric": key[1],
                    **{k: statistics.median(_num(r[k]) for r in rs) for k in ("img_per_s", "p50_ms")}})
    tput = [r for r in med if r["metric"] == "throughput"]
    lat = [r for r in med if r["metric"] == "latency_c1"]
    for ax, rs, key, ylabel in ((a, tput, "img_per_s", "images / s"), (b, lat, "p50_ms", "p50 ms, concurrency 1")):
        names = [r["way"] for r in rs]
        vals = [_num(r[key]) for r in rs]
        colors = ["C1" if "naive" in n else "C2" if n.split(" x")[0] in ("REST", "gRPC") else "C0" for n in names]
        bars = ax.bar(range(len(vals)), vals, color=colors)  # blue: in-process, green: served, orange: naive
        ax.set_xticks(range(len(vals)), names, rotation=20, ha="right", fontsize=8)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(textwrap.fill(title or "in-process vs served vs naive", 130), fontsize=9)
    return _save(fig, png)


def nms_title(header: str, rows: list[dict]) -> str:
    """The NMS plot's title from ``bench nms``'s header line (its date) and rows."""
    paths = "/".join(dict.fromkeys(str(r.get("backend", "torch")) for r in rows)) or "?"
    return f"{header[:16]}: polygon_nms on its {paths} path, 1 image"


def plot_nms(rows: list[dict], png: str | Path, title: str = "") -> Path:
    """ms per call vs number of candidates (log-log): polygon_nms as called by default (``polydet_ms``:
    backend "auto", the path in ``backend``), its torch path (``torch_ms``) and the shapely loops.
    Rows from before the numba kernel have neither column: ``polydet_ms`` was the torch path then."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    rs = sorted(rows, key=lambda r: _num(r["candidates"]))
    n = [_num(r["candidates"]) for r in rs]
    paths = "/".join(dict.fromkeys(str(r.get("backend", "torch")) for r in rs))
    ax.plot(n, [_num(r["polydet_ms"]) for r in rs], "o-", label=f"polygon_nms, default (auto: {paths} path)")
    if any("torch_ms" in r for r in rs) and paths != "torch":
        ax.plot(n, [_num(r.get("torch_ms")) for r in rs], "d-", label='polygon_nms, torch path (backend="torch"; CUDA\'s)')
    ax.plot(n, [_num(r["shapely_ms"]) for r in rs], "s--", label="shapely loop (the seeds' way)")
    if any("shapely_cached_ms" in r for r in rs):
        ax.plot(n, [_num(r.get("shapely_cached_ms")) for r in rs], "^:", label="shapely loop, hulls built once")
    return _save_log_log(fig, ax, png, "candidates after the conf filter", "ms per image", title or "polygon NMS",
                         legend_size=8)


def plot_gpu(rows: list[dict], png: str | Path, title: str = "") -> Path:
    """Model-only images/s vs batch on the GPU, one line per (variant, precision, imgsz)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keyf = lambda r: (r.get("variant", "torchscript sweep"), r["precision"], int(_num(r["imgsz"])))  # noqa: E731
    for key in dict.fromkeys(keyf(r) for r in rows):
        rs = sorted((r for r in rows if keyf(r) == key), key=lambda r: _num(r["batch"]))
        ax.plot([_num(r["batch"]) for r in rs], [_num(r["img_per_s"]) for r in rs], "o-",
                label=f"{key[0]} {key[1]} {key[2]}")
    return _save_log_log(fig, ax, png, "batch", "images / s (model only)", title or "GPU model-only throughput",
                         legend_size=7, xbase=2)


def _save_log_log(fig, ax, png, xlabel: str, ylabel: str, title: str, legend_size: int, xbase: int = 10) -> Path:
    """Log-log axes with labels, grid, legend and title; the figure saved as ``png``."""
    ax.set_xscale("log", base=xbase)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)
    ax.set_title(title, fontsize=10)
    return _save(fig, png)


def _save(fig, png) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    _plt().close(fig)
    return png


def _read(path: Path) -> list[dict]:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return list(csv.DictReader(path.open()))


def main(argv: list[str] | None = None) -> int:
    """Redraw the plots of a results folder from the data files found there."""
    root = Path((argv or sys.argv[1:] or ["benchmarks/results"])[0])
    jobs = (("loadtest/summary.csv", plot_load, "loadtest/load.png"), ("compare.csv", plot_compare, "compare.png"))
    for data, fn, png in jobs:
        if (root / data).exists():
            print(fn(_read(root / data), root / png))
    if (root / "nms.json").exists():  # bench nms's rows with its header (the date in the title)
        nms = _read(root / "nms.json")
        print(plot_nms(nms["rows"], root / "nms.png", nms_title(nms.get("header", ""), nms["rows"])))
    elif (root / "nms.csv").exists():
        print(plot_nms(_read(root / "nms.csv"), root / "nms.png"))
    gpu = []  # the shipped backend's sweep (fp32 and fp16) plus the fp16 variants tried for the target
    for name in ("gpu_model_throughput.json", "gpu_model_variants.json", "gpu_model_compile.json"):
        for r in _read(root / name) if (root / name).exists() else []:
            if name == "gpu_model_throughput.json":  # scripts/gpu_tests.sh: the backend as shipped
                gpu.append({**r, "variant": "backend as shipped (channels_last on CUDA)"})
            elif "variant" in r:  # measured before the backend went channels_last
                gpu.append({**r, "variant": {"torchscript": "torchscript contiguous (before)"}.get(r["variant"], r["variant"])})
    if gpu:
        print(plot_gpu(gpu, root / "gpu_model_throughput.png", "GPU model only (see BENCHMARKS.md for the runs)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
