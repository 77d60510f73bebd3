"""The full in-process pipeline on a GPU host: JPEG bytes -> detections, CPU decode vs GPU decode.

Ways, on the same JPEG pool (long sides 320-1600 px, as the load tests) and the same artifact:

- ``cpu-decode``: ``Detector.detect(list of bytes)``, i.e. PIL decode + cv2 letterbox on one CPU thread,
  then the model and polygon NMS on the GPU (what a TorchServe worker does);
- ``cpu-decode xN threads``: the decode + letterbox of a batch spread over N threads (PIL releases the
  GIL while decoding), then ``Detector`` from arrays;
- ``gpu-decode``: ``torchvision.io.decode_jpeg(..., device="cuda")`` on the whole batch (nvJPEG), a
  letterbox on the GPU (bilinear resize into a 114-grey canvas, same geometry as ops.letterbox), the
  model, NMS on the GPU, polygons scaled back: only the JPEG bytes cross to the GPU.

Each way reports images/s end to end and the time per stage. Run by scripts/gpu_serve_bench.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polydet.bench.common import sample_jpegs, table, weights_or_random  # noqa: E402
from polydet.export import export  # noqa: E402
from polydet.imageio import decode_image  # noqa: E402
from polydet.ops.letterbox import PAD_VALUE, Letterbox, letterbox_shape  # noqa: E402
from polydet.pipeline import Detector  # noqa: E402
from polydet.preprocess import Frame  # noqa: E402


def gpu_prepare(det: Detector, jpegs: list[bytes]):
    """nvJPEG decode of the batch + letterbox on the GPU -> (x (B,3,S,S) on the GPU, prepared list)."""
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    imgs = decode_jpeg(datas, device=det.device)  # list of (3, H, W) uint8 RGB on the GPU
    size = det.info.imgsz
    x = torch.full((len(imgs), 3, size, size), PAD_VALUE / 255.0, device=det.device, dtype=det.backend.input_dtype)
    prepared = []
    for i, im in enumerate(imgs):
        h, w = im.shape[1:]
        (oh, ow), r, (nh, nw) = letterbox_shape((h, w), size, det.info.stride)
        top, left = (oh - nh) // 2, (ow - nw) // 2
        small = F.interpolate(im[None].to(x.dtype), size=(nh, nw), mode="bilinear", align_corners=False)
        x[i, :, top:top + nh, left:left + nw] = small[0].round_().clamp_(0, 255).div_(255.0)
        prepared.append(Frame(None, Letterbox(scale=r, pad=(float(left), float(top)), in_shape=(h, w),
                                              out_shape=(oh, ow))))
    return x, prepared


def run_way(det: Detector, way: str, jpegs: list[bytes], batch: int, seconds: float, pool=None) -> dict:
    stages = {"prepare": 0.0, "model": 0.0, "nms_unmap": 0.0}
    n, i, t_start = 0, 0, time.perf_counter()
    results = None
    while time.perf_counter() - t_start < seconds or n < 2 * batch:
        chunk = [jpegs[(i + k) % len(jpegs)] for k in range(batch)]
        i += batch
        t0 = time.perf_counter()
        if way == "gpu-decode":
            x, prepared = gpu_prepare(det, chunk)
        else:
            images = list(pool.map(decode_image, chunk)) if pool else chunk
            prep = det.preprocessor(images)
            x, prepared = prep.batch, prep.frames
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        pred = det.backend(x)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        results = det.postprocess(pred, prepared, [det.options] * len(chunk))
        t3 = time.perf_counter()
        stages["prepare"] += t1 - t0
        stages["model"] += t2 - t1
        stages["nms_unmap"] += t3 - t2
        n += batch
    total = sum(stages.values())
    row = {"way": way, "batch": batch, "img_per_s": n / total}
    row.update({f"{k}_ms_per_img": v * 1e3 / n for k, v in stages.items()})
    row["detections_last_batch"] = sum(len(r) for r in results)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=224)
    p.add_argument("--batches", default="64,256")
    p.add_argument("--threads", type=int, default=16, help="decode threads of the threaded CPU way")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--half", action="store_true", help="fp16 model")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--nms", default="auto", help="POLYDET_NMS settings to compare, e.g. auto,torch (auto: the numba "
                   "kernel on the CPU where numba loads)")
    p.add_argument("--ways", default="cpu-decode,threads,gpu-decode", help="subset of cpu-decode,threads,gpu-decode")
    args = p.parse_args(argv)
    ways = set(args.ways.split(","))
    torch.backends.cudnn.benchmark = True
    weights = weights_or_random()
    jpegs = sample_jpegs(64, sizes=(320, 640, 1024, 1600))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.threads) as pool:
        path, _ = export(weights, "torchscript", out=Path(tmp) / "m.torchscript", imgsz=args.imgsz, verify=False)
        for nms in args.nms.split(","):
            os.environ["POLYDET_NMS"] = nms
            det = Detector.from_artifact(path, device="cuda", precision="fp16" if args.half else None)
            # The GPU way must find what the CPU way finds (same geometry; resize filters differ slightly).
            a = det.detect(jpegs[:8])
            x, prep = gpu_prepare(det, jpegs[:8])
            b = det.postprocess(det.backend(x), prep, [det.options] * 8)
            label = f"{nms} ({det.nms_backend}, {'cpu' if det.nms_on_cpu else 'gpu'})"
            print(f"NMS {label}; detections cpu-decode / gpu-decode on 8 images:", [len(r) for r in a],
                  [len(r) for r in b], flush=True)
            for batch in [int(v) for v in args.batches.split(",")]:
                for key, way, use_pool in (("cpu-decode", "cpu-decode", None),
                                           ("threads", f"cpu-decode x{args.threads} threads", pool),
                                           ("gpu-decode", "gpu-decode", None)):
                    if key not in ways:
                        continue
                    run_way(det, way, jpegs, batch, 1.0, use_pool)  # warm-up (cudnn autotune, nvJPEG init)
                    rows.append({"nms": label, **run_way(det, way, jpegs, batch, args.seconds, use_pool)})
                    print(rows[-1], flush=True)
                    if args.json_out:
                        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    mp = np.mean([decode_image(b).shape[0] * decode_image(b).shape[1] for b in jpegs]) / 1e6
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}, weights {Path(weights).name}, imgsz "
          f"{args.imgsz}, {'fp16' if args.half else 'fp32'}; JPEG pool: 64 images, 320-1600 px, mean {mp:.2f} MP\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
