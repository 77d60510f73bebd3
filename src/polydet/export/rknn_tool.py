"""The toolkit's side of polydet's RKNN seam. Run ONLY by the rknn venv's python (``polydet.export.rknn.RKNN_ENV``):

    python -m polydet.export.rknn_tool build JOB.json   # build the split ONNX for the target, write job["out"]
    python -m polydet.export.rknn_tool serve JOB.json   # build it again and run it in the PC simulator

``serve`` speaks arrays on stdin/stdout (``send``/``recv``): after building it sends one empty array
(ready), then for every (1,3,S,S) float32 array received sends two, coords and scores; it exits at end of input. The
toolkit prints to stdout, so the protocol uses a copy of the original stdout and the toolkit's prints go to
stderr. Imports only numpy and rknn: polydet's own modules (and their pins) are not needed here.
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np


def send(f, arr: np.ndarray) -> None:
    """One array on a pipe: its .npy bytes after their length (8 bytes, little endian)."""
    buf = io.BytesIO()
    np.save(buf, arr)
    f.write(len(buf.getbuffer()).to_bytes(8, "little"))
    f.write(buf.getbuffer())
    f.flush()


def recv(f) -> np.ndarray | None:
    """The next array ``send`` wrote, None at end of input (np.load/read_array seek or ask a pipe its position)."""
    head = f.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "little")
    data = f.read(n)
    if len(data) < n:
        raise EOFError(f"pipe closed after {len(data)} of {n} bytes")
    return np.load(io.BytesIO(data))


def _ok(ret: int, step: str) -> None:
    if ret != 0:
        raise SystemExit(f"rknn-toolkit2: {step} failed ({ret})")


def build(job: dict):
    from rknn.api import RKNN

    r = RKNN(verbose=False)
    # No mean/std: the model takes the pipeline's letterboxed float input in [0, 1] as it is.
    r.config(target_platform=job["target"], optimization_level=3)
    size = job["imgsz"]
    _ok(r.load_onnx(job["onnx"], inputs=["images"], input_size_list=[[1, 3, size, size]]), "load_onnx")
    _ok(r.build(do_quantization=bool(job["int8"]), dataset=job.get("dataset")), "build")
    return r


def serve(job: dict, proto) -> None:
    r = build(job)
    _ok(r.init_runtime(target=None), "init_runtime (simulator)")
    send(proto, np.zeros(0, np.float32))
    while (x := recv(sys.stdin.buffer)) is not None:
        coords, scores = r.inference(inputs=[x], data_format=["nchw"])
        send(proto, np.ascontiguousarray(coords, np.float32))
        send(proto, np.ascontiguousarray(scores, np.float32))
    r.release()


def main(argv: list[str]) -> int:
    mode, path = argv
    job = json.loads(open(path).read())
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the toolkit's prints and progress bars: stderr, never into the protocol
    sys.stdout = sys.stderr
    if mode == "build":
        r = build(job)
        _ok(r.export_rknn(job["out"]), "export_rknn")
        r.release()
    elif mode == "serve":
        serve(job, proto)
    else:
        raise SystemExit(f"unknown mode {mode!r}: build or serve")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
