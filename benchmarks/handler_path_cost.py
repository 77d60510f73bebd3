"""CPU per image of the library's in-process path vs the TorchServe handler's path, one process, 1 thread.

The handler's path is polydet.serving.service.DetectionService.answer (request parsing, the pipeline on
the bytes, the contract dicts) plus json.dumps; the library's is ``Detector.detect(bytes)``. Both decode
straight to RGB once. This measures what each step costs on the JPEG pool of the load tests (bundled
weights if present, at their input size), batches of 4, best of 3.

    .venv/bin/python benchmarks/handler_path_cost.py
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # one torch thread, as in a tuned TorchServe worker
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from polydet.bench.common import sample_jpegs, weights_or_random  # noqa: E402
from polydet.export import export  # noqa: E402
from polydet.imageio import decode_image  # noqa: E402
from polydet.pipeline import Detector  # noqa: E402
from polydet.serving.service import DetectionService  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export(weights_or_random(), "torchscript", out=Path(tmp) / "m.torchscript", verify=False)
        det = Detector.from_artifact(path)
    service = DetectionService(det)
    jpegs = sample_jpegs(16, (320, 640, 1024, 1600))
    ways = {
        "Detector.detect(bytes) (in-process)": det.detect,
        "decode_image(rgb=True) only": lambda c: [decode_image(b, rgb=True) for b in c],
        "decode_image() -> BGR only": lambda c: [decode_image(b) for b in c],
        "Detector.detect(decode_image() arrays)": lambda c: det.detect([decode_image(b) for b in c]),
        "DetectionService.answer + json.dumps (handler)": lambda c: [
            json.dumps(r.body, separators=(",", ":")) for r in service.answer([{"body": bytearray(b)} for b in c])[0]],
    }
    print("| way | CPU ms per image (best of 3) |\n|---|---|")
    for name, fn in ways.items():
        fn(jpegs[:4])  # warm-up
        passes = []
        for _ in range(3):
            c = cpu_s()
            for i in range(0, len(jpegs), 4):
                fn(jpegs[i:i + 4])
            passes.append((cpu_s() - c) * 1e3 / len(jpegs))
        print(f"| {name} | {min(passes):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
