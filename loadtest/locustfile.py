"""Locust load test for a polydet TorchServe: a REST user and a gRPC user, closed loop (no think time).

Each request posts one JPEG from a pool of long sides (``POLYDET_SIZES``, default 320,640,1024,1600 px;
or the images in ``POLYDET_IMAGES``, a folder). A request counts as a success only when TorchServe
answers 200 with an output-contract body (``width``, ``height``, ``detections``); anything else is a
failure whose reason is the status and the server's message. Tokens come from TorchServe's
key_file.json (``POLYDET_KEY_FILE``, default ./key_file.json; ``none`` sends no token).

    locust -f loadtest/locustfile.py RestUser --host http://127.0.0.1:8080 --headless -u 8 -r 8 -t 30s
    POLYDET_GRPC_TARGET=127.0.0.1:7070 locust -f loadtest/locustfile.py GrpcUser --headless -u 8 -t 30s
    polydet bench serve --users 1,4,16   # runs these steps headless and plots them

Environment: POLYDET_MODEL (default polydet), POLYDET_GRPC_TARGET (default 127.0.0.1:7070, or the
--host of a GrpcUser run), POLYDET_SIZES, POLYDET_IMAGES, POLYDET_KEY_FILE, and POLYDET_SUMMARY: a JSON
file written at exit with the final totals and failure reasons (locust's CSV files are snapshots taken
every second and can miss the last one).

POLYDET_IMAGES_PER_REQUEST=N (default 1) sends N images in each request: a multipart form with fields
image0..image{N-1} over REST, as many input keys over gRPC (raw bytes both ways, no base64). Such a
request succeeds only when every one of its N results is an output-contract object; locust counts
requests, so images/s is N x req/s (the summary file says both).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, constant, events, task

grpc_gevent.init_gevent()  # grpc's blocking calls must yield to gevent, or one user blocks them all

MODEL = os.environ.get("POLYDET_MODEL", "polydet")
PER_REQUEST = int(os.environ.get("POLYDET_IMAGES_PER_REQUEST", "1"))
_pool: list[tuple[str, bytes]] = []
_tokens = None


def _load_pool() -> list[tuple[str, bytes]]:
    folder = os.environ.get("POLYDET_IMAGES")
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise SystemExit(f"POLYDET_IMAGES={folder} holds no .jpg/.png")
        return [(p.name, p.read_bytes()) for p in files]
    from polydet.bench.common import sample_jpegs

    sizes = [int(s) for s in os.environ.get("POLYDET_SIZES", "320,640,1024,1600").split(",")]
    return [(f"{sizes[i % len(sizes)]}px", b) for i, b in enumerate(sample_jpegs(4 * len(sizes), sizes=sizes))]


@events.init.add_listener
def _on_init(environment, **_kw):
    global _pool, _tokens
    _pool = _load_pool()
    key_file = os.environ.get("POLYDET_KEY_FILE", "key_file.json")
    if key_file != "none":
        from polydet.serving.server import Tokens

        _tokens = Tokens.read(key_file, timeout=10)


@events.quitting.add_listener
def _on_quitting(environment, **_kw):
    path = os.environ.get("POLYDET_SUMMARY")
    if not path:
        return
    total = environment.stats.total
    pct = {f"p{q}_ms": total.get_response_time_percentile(q / 100) if total.num_requests else float("nan")
           for q in (50, 95, 99)}
    errors = sorted(environment.stats.errors.values(), key=lambda e: -e.occurrences)
    Path(path).write_text(json.dumps({
        "requests": total.num_requests, "failures": total.num_failures, "req_per_s": total.total_rps, **pct,
        "images_per_request": PER_REQUEST, "img_per_s": total.total_rps * PER_REQUEST,
        "mean_ms": total.avg_response_time,
        "failure_reasons": [f"{e.occurrences}x {e.name}: {e.error}" for e in errors]}))


def _auth() -> dict:
    return {"Authorization": f"Bearer {_tokens.inference}"} if _tokens else {}


def _pick() -> tuple[str, list[bytes]]:
    """The request's name (its pool entry, or N x) and its images."""
    if PER_REQUEST == 1:
        name, jpeg = random.choice(_pool)
        return name, [jpeg]
    return f"{PER_REQUEST}x", [jpeg for _, jpeg in random.choices(_pool, k=PER_REQUEST)]


def check_body(text: str, images: int = 1) -> str | None:
    """None when ``text`` is an output-contract answer (``images`` > 1: a list of that many), else why not
    (what the server said)."""
    try:
        body = json.loads(text)
    except ValueError:
        return f"not JSON: {text[:120]!r}"
    if images > 1 and isinstance(body, dict) and isinstance(body.get("results"), list):
        bad = [r for r in body["results"] if not (isinstance(r, dict) and {"width", "height", "detections"} <= set(r))]
        if len(body["results"]) != images:
            return f"{len(body['results'])} results for {images} images"
        return f"{len(bad)} of {images} images failed: {str(bad[0])[:150]}" if bad else None
    if images == 1 and isinstance(body, dict) and {"width", "height", "detections"} <= set(body):
        return None
    if isinstance(body, dict) and ("error" in body or "message" in body):
        return f"{body.get('code', '')} {body.get('error') or body.get('message')}"[:200]
    return f"unexpected body: {text[:120]!r}"


class RestUser(FastHttpUser):
    """POST /predictions/{model} with the raw JPEG (Content-Type application/octet-stream), or a multipart
    form of POLYDET_IMAGES_PER_REQUEST JPEGs."""

    wait_time = constant(0)

    @task
    def predict(self):
        name, images = _pick()
        if len(images) == 1:
            body, ctype = images[0], "application/octet-stream"
        else:
            from polydet.bench.common import multipart_body

            body, ctype = multipart_body(images)
        headers = {"Content-Type": ctype, **_auth()}
        with self.client.post(f"/predictions/{MODEL}", data=body, headers=headers, name=f"REST {name}",
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            else:
                why = check_body(resp.text, len(images))
                if why:
                    resp.failure(why)
                else:
                    resp.success()


class GrpcUser(User):
    """InferenceAPIsService.Predictions with the JPEG in input ``data`` (stubs from the installed jar), or
    POLYDET_IMAGES_PER_REQUEST JPEGs in inputs image0, image1, ..."""

    wait_time = constant(0)

    def __init__(self, environment):
        super().__init__(environment)
        import grpc

        from polydet.serving import grpc_stubs

        self.pb = grpc_stubs.load()
        target = os.environ.get("POLYDET_GRPC_TARGET") or (self.host or "127.0.0.1:7070").split("://")[-1]
        opts = [("grpc.max_send_message_length", 16 * 2**20), ("grpc.max_receive_message_length", 16 * 2**20)]
        self.channel = grpc.insecure_channel(target, options=opts)
        self.stub = self.pb.inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {_tokens.inference}"),) if _tokens else None

    def on_stop(self):
        self.channel.close()

    @task
    def predict(self):
        import grpc

        name, images = _pick()
        inputs = {"data": images[0]} if len(images) == 1 else {f"image{k}": b for k, b in enumerate(images)}
        req = self.pb.inference_pb2.PredictionsRequest(model_name=MODEL, input=inputs)
        t0 = time.perf_counter()
        exc, length = None, 0
        try:
            resp = self.stub.Predictions(req, metadata=self.metadata, timeout=120)
            length = len(resp.prediction)
            why = check_body(resp.prediction.decode("utf-8", "replace"), len(images))
            if why:  # gRPC ignores per-request statuses: handler errors come back OK with an error body
                exc = RuntimeError(why)
        except grpc.RpcError as e:
            exc = RuntimeError(f"{e.code().name}: {(e.details() or '')[:200]}")
        self.environment.events.request.fire(request_type="gRPC", name=f"gRPC {name}",
                                             response_time=(time.perf_counter() - t0) * 1e3,
                                             response_length=length, exception=exc, context={})
