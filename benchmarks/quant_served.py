"""Served throughput of several artifacts of one model: each archived as it is (`polydet archive --artifact`, the
default batching: 2 single-threaded workers, batches of up to 4), all registered in one real TorchServe, then
measured in turn within each round (so a change in the shared machine's load hits every artifact alike): a
closed loop of ``concurrency`` REST clients posting the same real JPEGs for ``seconds``. Used by quant_bench.py.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def archive_all(artifacts: dict[str, Path], store: Path, build: Path) -> dict[str, str]:
    """name -> model name in the store (polydet_q0, polydet_q1, ...), each archive from its artifact as it is."""
    from polydet.serving.archive import main as archive_main

    models = {}
    for i, (name, path) in enumerate(artifacts.items()):
        model = f"polydet_q{i}"
        if archive_main(["--artifact", str(path), "--name", model, "--store", str(store), "--build", str(build)]):
            raise RuntimeError(f"polydet archive failed for {name} ({path})")
        models[name] = model
    return models


def served_throughput(artifacts: dict[str, Path], jpegs: list[bytes], workdir: Path, seconds: float = 15.0,
                      rounds: int = 3, concurrency: int = 8) -> dict[str, dict]:
    """name -> {"served_img_s": median over rounds, "served_rounds": [...], "served_failures": n}."""
    from polydet.bench.common import closed_loop, rest_caller
    from polydet.serving.server import Ports, TorchServe

    store, build = workdir / "served_store", workdir / "served_build"
    models = archive_all(artifacts, store, build)
    ts = TorchServe(workdir / "ts", REPO / "config.properties", ports=Ports.free(), model_store=store,
                    models=",".join(f"{m}.mar" for m in models.values()))
    ts.start()
    try:
        for m in models.values():
            ts.wait_ready(m, timeout=300)
        per = {name: [] for name in models}
        fails = dict.fromkeys(models, 0)
        for name, model in models.items():  # warm-up: the first batches of each size are slow
            closed_loop(rest_caller(ts.inference_url, ts.tokens.inference, jpegs, model), concurrency, 3.0, 0.5)
        for r in range(rounds):
            for name, model in models.items():
                got = closed_loop(rest_caller(ts.inference_url, ts.tokens.inference, jpegs, model), concurrency,
                                  seconds, warmup_s=1.0)
                per[name].append(got["req_per_s"])
                fails[name] += got["failures"]
                print(f"served round {r + 1}/{rounds} {name}: {got['req_per_s']:.1f} img/s", flush=True)
    finally:
        ts.stop()
    return {name: {"served_img_s": statistics.median(v), "served_rounds": v, "served_failures": fails[name]}
            for name, v in per.items()}
