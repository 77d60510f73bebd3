"""polydet served by tritonserver through PyTriton: v2 HTTP and gRPC, Triton's dynamic batcher, Triton's own
metrics port. ``python -m polydet.fronts.triton --artifact A ...`` in the pytriton venv (``polydet front
triton`` builds it and starts this).

The tensors are ``polydet.serving.oip``'s with Triton's batch axis in front: a request is one batch item,
``images`` BYTES [1,N] (``options`` [1,1]); the answer's tensors are [1,T,4,2], [1,T], [1,N] ...
(``oip.split_outputs`` reads them as they are). The dynamic batcher hands over up to ``--max-batch-size``
requests at once; their images go through the model as one batch (per distinct options).

Errors are answered in place (``status``/``results``), including a request whose every image failed and
bad ``options`` or a request over the handler's limits (each image of that request: 400 or 413 and the reason). The layout's rule would fail such a request
with its status, but PyTriton 0.7.0 has one error path: an exception from the model fails the whole Triton
batch (every request batched with it) with HTTP 500 / gRPC INTERNAL and a traceback as the message.

PyTriton 0.7.0 fixes made here: Triton's JSON mode delivers a BYTES element as the bytes of its JSON string,
so an element that is base64 text is read as base64 (an image file is never all base64 characters); PyTriton
cannot copy an empty array into its shared memory (``memoryview.cast`` of a zero-size view: TypeError, and an
answer without detections failed), so empty frames are written as ``b""``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import sysconfig

import numpy as np

from ..errors import InvalidInputError
from ..results import ImageError
from ..serving import oip
from .common import load_service, make_parser

DTYPES = {"BYTES": np.bytes_, "FP32": np.float32, "INT32": np.int32}
BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")


class Binding:
    """PyTriton's inference callable: a list of requests (one Triton batch) -> one output dict each."""

    def __init__(self, service):
        self.service = service

    def __call__(self, requests: list) -> list[dict]:
        answers: list = []  # per request: its images, then their results; or the InvalidInputError of its inputs
        groups: dict[str, list[int]] = {}
        for k, req in enumerate(requests):
            try:
                tensors = {name: req[name] for name in req}
                if "images" in tensors:
                    tensors["images"] = [_base64_text(x) for x in np.asarray(tensors["images"], object).reshape(-1)]
                images, overrides = oip.decode_inputs(tensors, **oip.limits(self.service.config))
                self.service.options_for(overrides)  # bad options: this request's error, not the batch's
                answers.append(images)
                groups.setdefault(json.dumps(overrides, sort_keys=True), []).append(k)
            except InvalidInputError as e:
                answers.append(e)
        for key, ks in groups.items():  # one pass through the model per distinct options
            results, _ = self.service.detect_images([im for k in ks for im in answers[k]], json.loads(key))
            for k in ks:
                answers[k], results = results[:len(answers[k])], results[len(answers[k]):]
        return [_outputs(a, req) for a, req in zip(answers, requests)]


def _base64_text(item):
    if isinstance(item, (bytes, np.bytes_)) and (bytes(item).startswith(b"data:") or BASE64.fullmatch(bytes(item))):
        return bytes(item).decode("ascii")  # oip reads a str element as base64
    return item


def _outputs(answer, request) -> dict:
    if isinstance(answer, Exception):  # every image of the request gets the reason
        n = np.asarray(request.data.get("images", [b""]), object).size or 1
        answer = [ImageError(answer.http_status, str(answer))] * n
    return {name: a[None] for name, a in oip.encode_outputs(answer).items()}  # Triton's batch axis


def _empty_arrays_fix() -> None:
    from pytriton.proxy.data import TensorStore

    copy = TensorStore._copy_frames

    def copy_frames(self, frames, shm, offset):
        return copy(self, [b"" if memoryview(f).nbytes == 0 else f for f in frames], shm, offset)
    TensorStore._copy_frames = copy_frames


def tensors(specs) -> list:
    from pytriton.model_config import Tensor

    return [Tensor(name=t.name, dtype=DTYPES[t.datatype], shape=t.shape, optional=t.optional) for t in specs]


def main(argv: list[str] | None = None) -> int:
    p = make_parser("triton", 8000, 8001)
    p.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics (default %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests per Triton batch (default %(default)s)")
    p.add_argument("--max-queue-delay-us", type=int, default=5000,
                   help="how long the dynamic batcher waits for more requests (default %(default)s)")
    args = p.parse_args(argv)
    # tritonserver's Python backend stub links libpython: without the interpreter's library folder on the
    # loader path the model fails to load
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, (libdir, os.environ.get("LD_LIBRARY_PATH"))))
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    _empty_arrays_fix()
    service = load_service(args, batch_size=args.max_batch_size)
    config = TritonConfig(http_address=args.host, http_port=args.http_port, grpc_address=args.host,
                          grpc_port=args.grpc_port, metrics_address=args.host, metrics_port=args.metrics_port,
                          allow_metrics=True, allow_cpu_metrics=True, exit_on_error=True)
    # SIGTERM (Front.stop, `kill PID`): leave through serve()'s KeyboardInterrupt path, which stops tritonserver
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Triton(config=config) as triton:
        triton.bind(model_name=args.name, infer_func=Binding(service), inputs=tensors(oip.INPUTS),
                    outputs=tensors(oip.OUTPUTS), config=ModelConfig(
                        max_batch_size=args.max_batch_size,
                        batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)))
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
