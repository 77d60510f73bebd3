"""Where a TorchServe worker's CPU per image goes, measured without the Java frontend (issue 11, item 9).

Runs TorchServe 0.12.0's own Python worker code in this process on a real archive (``polydet archive``,
TorchScript, batchSize 4): ``ts.protocol.otf_message_handler.retrieve_msg`` reads batches framed as the
frontend frames them from one end of a socketpair (a thread writes them), ``ts.service.Service.predict``
runs polydet's handler and builds the response, and ``sendall`` writes it back (a thread drains it). The
worker's logging goes to a pipe, as in a real worker whose stdout the frontend reads (another thread counts
its bytes). CPU is this thread's (``time.thread_time``: torch runs 1 intra-op thread, in this thread).

Each way runs on the same batches of 4 JPEGs, in alternating rounds; per way the median over rounds:

- ``detect``: ``Detector.detect(bytes)``, the in-process pipeline;
- ``answer``: ``DetectionService.answer`` + ``json.dumps`` of each body;
- ``handle``: the handler's ``handle(data, context)`` as TorchServe calls it (metrics included);
- ``predict``: ``Service.predict(msg)`` (TorchServe's request objects, PredictionTime, response framing);
- ``loop``: the whole worker loop: socket read, predict, sendall.

    .venv/bin/python benchmarks/overhead_worker_loop.py [--rounds 5] [--batches 16] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # one torch thread, as in a tuned TorchServe worker
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HEADERS = {"Host": "127.0.0.1:8080", "User-Agent": "python-requests/2.32.3", "Accept-Encoding": "gzip, deflate",
           "Accept": "*/*", "Connection": "keep-alive", "content-type": "application/octet-stream"}


def frame(batch: list[bytes], first_id: int) -> bytes:
    """The frontend's inference message for one batch (the inverse of ts's _retrieve_inference_msg)."""
    def blob(b: bytes) -> bytes:
        return struct.pack("!i", len(b)) + b

    out = bytearray(b"I")
    for k, body in enumerate(batch):
        out += blob(f"req-{first_id + k:08d}".encode())
        for name, value in {**HEADERS, "Content-Length": str(len(body))}.items():
            out += blob(name.encode()) + blob(value.encode())
        out += struct.pack("!i", -1)
        out += blob(b"body") + blob(b"application/octet-stream") + blob(body) + struct.pack("!i", -1)
    return bytes(out + struct.pack("!i", -1))


class Worker:
    """A TorchServe Service over polydet's handler, as a worker loads it, with its logging on a pipe."""

    def __init__(self, tmp: Path):
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
        from ts.model_loader import TsModelLoader

        from polydet.bench.serve import MODEL, ServeSettings, build_store
        from polydet.serving.properties import METRICS_YAML

        store, self.artifact = build_store(tmp, settings=ServeSettings(batch_size=4))
        model_dir = tmp / "model_dir"
        zipfile.ZipFile(store / f"{MODEL}.mar").extractall(model_dir)
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        read_fd, write_fd = os.pipe()
        self.log_bytes = 0
        threading.Thread(target=self._drain_log, args=(read_fd,), daemon=True).start()
        logging.basicConfig(stream=os.fdopen(write_fd, "w", buffering=1), format="%(message)s", level=logging.INFO,
                            force=True)
        cache = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))
        cache.initialize_cache()
        cache.model_name = MODEL
        sys.path.insert(0, str(model_dir))  # the frontend starts a worker with the model's folder on its path
        self.service = TsModelLoader().load(MODEL, str(model_dir), manifest["model"]["handler"], None, 4, None,
                                            True, cache)
        self.a, self.b = socket.socketpair()
        self.service.set_cl_socket(self.a)

    def _drain_log(self, fd: int) -> None:
        while chunk := os.read(fd, 1 << 16):
            self.log_bytes += len(chunk)

    def loop(self, frames: list[bytes]) -> None:
        from ts.protocol.otf_message_handler import retrieve_msg

        def write():
            for f in frames:
                self.b.sendall(f)

        def drain():
            done = 0
            while done < len(frames):  # each response ends with an int -1 (End of list); count them loosely
                chunk = self.b.recv(1 << 16)
                done += chunk.count(b"\xff\xff\xff\xff")
        writer, drainer = threading.Thread(target=write), threading.Thread(target=drain, daemon=True)
        writer.start()
        drainer.start()
        for _ in frames:
            _, msg = retrieve_msg(self.a)
            self.a.sendall(self.service.predict(msg))
        writer.join()


def ways(worker: Worker, batches: list[list[bytes]]) -> dict:
    """name -> (prepare, run): ``prepare()`` (untimed) returns what ``run`` takes."""
    from ts.protocol.otf_message_handler import _retrieve_inference_msg

    svc = worker.service
    handler = svc._entry_point.__self__
    service = handler.service
    frames = [frame(b, i * len(b)) for i, b in enumerate(batches)]

    def msgs():  # what retrieve_msg hands predict, read from a socketpair outside the timed part
        out = []
        for f in frames:
            a, b = socket.socketpair()
            t = threading.Thread(target=b.sendall, args=(f[1:],))
            t.start()
            out.append(_retrieve_inference_msg(a))
            t.join()
            a.close(), b.close()
        return out

    def handle(ms):
        for m in ms:
            headers, data, ids = svc.retrieve_data_for_inference(m)
            svc.context.request_ids, svc.context.request_processor = ids, headers
            svc.context.metrics.request_ids = ids
            handler.handle(data, svc.context)

    none = lambda: None
    return {
        "detect": (none, lambda _: [service.detector.detect(b) for b in batches]),
        "answer": (none, lambda _: [[json.dumps(r.body, separators=(",", ":")) for r in service.answer(
            [{"body": bytearray(x)} for x in b])[0]] for b in batches]),
        "handle": (msgs, handle),
        "predict": (msgs, lambda ms: [svc.predict(m) for m in ms]),
        "loop": (none, lambda _: worker.loop(frames)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=16, help="batches per way and round")
    ap.add_argument("--batch-size", type=int, default=4, help="images per batch (TorchServe's batchSize is 4)")
    ap.add_argument("--only", default="", help="comma list of ways (default: all)")
    ap.add_argument("--profile", default="", help="cProfile the 'loop' way into this file (one extra pass)")
    args = ap.parse_args(argv)
    import torch

    from polydet.bench.common import sample_jpegs

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="polydet-overhead-") as tmp:
        worker = Worker(Path(tmp))
        jpegs = sample_jpegs(16, (320, 640, 1024, 1600))
        bs = args.batch_size
        batches = [[jpegs[(bs * i + k) % len(jpegs)] for k in range(bs)] for i in range(args.batches)]
        table = ways(worker, batches)
        table = {k: v for k, v in table.items() if not args.only or k in args.only.split(",")}
        for prepare, run in table.values():  # warm-up
            run(prepare())
        cpu = {k: [] for k in table}
        logged = {k: [] for k in table}
        for _ in range(args.rounds):
            for name, (prepare, run) in table.items():
                arg = prepare()
                time.sleep(0.05)  # the log drain catches up outside the timing
                before, c = worker.log_bytes, time.thread_time()
                run(arg)
                cpu[name].append((time.thread_time() - c) * 1e3 / (bs * len(batches)))
                time.sleep(0.05)
                logged[name].append((worker.log_bytes - before) / len(batches))
        print(f"| way | CPU ms per image, median of {args.rounds} (min-max) | log bytes per batch |\n|---|---|---|")
        for name in table:
            v = cpu[name]
            print(f"| {name} | {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f}) | "
                  f"{statistics.median(logged[name]):.0f} |")
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            worker.loop([frame(b, i * bs) for i, b in enumerate(batches)])
            prof.disable()
            prof.dump_stats(args.profile)
            print(f"profile of one 'loop' pass: {args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
