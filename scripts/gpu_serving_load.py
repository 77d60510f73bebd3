"""The closed-loop REST clients of scripts/gpu_serving_bench.py serve: client processes on the same host, each
with threads sending raw JPEG bodies (1 image per request) or JSON {"images": [base64 ...]}, every answer
checked (one result with detections per image); the GPU memory the workers hold."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polydet.bench.common import percentiles, run_together  # noqa: E402


def _caller(url, token, jpegs, model, per_request):
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    bodies = []
    for k in range(len(jpegs)):
        if per_request == 1:
            bodies.append((jpegs[k], "application/octet-stream"))
        else:
            imgs = [base64.b64encode(jpegs[(k + j) % len(jpegs)]).decode() for j in range(per_request)]
            bodies.append((json.dumps({"images": imgs}).encode(), "application/json"))

    def make(i):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        k = [i]

        def call():
            body, ctype = bodies[k[0] % len(bodies)]
            k[0] += 1
            try:
                conn.request("POST", f"/predictions/{model}", body=body, headers={"Content-Type": ctype, **auth})
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                return type(e).__name__
            if r.status != 200:
                return f"HTTP {r.status}: {data[:100]!r}"
            got = json.loads(data)
            res = [got] if per_request == 1 else got.get("results", [])
            ok = len(res) == per_request and all("detections" in x for x in res)
            return None if ok else f"bad answer: {data[:100]!r}"

        return call

    return make


def _child(url, token, threads, seconds, pool, model, per_request, ready, start, results):
    from polydet.bench.common import timed_child_loop

    make = _caller(url, token, [base64.b64decode(s) for s in json.loads(Path(pool).read_text())], model, per_request)
    timed_child_loop(make, threads, seconds, ready, start, results)


def load(ts, model, clients, seconds, per_request, procs, pool) -> dict:
    token = ts.tokens.inference
    per = [clients // procs + (k < clients % procs) for k in range(procs)]
    got = run_together(_child, [(ts.inference_url, token, n, seconds, pool, model, per_request) for n in per if n],
                       ready_timeout=120, result_timeout=seconds + 300)
    lat = [x for g in got for x in g["latencies"]]
    rps = sum(g["req_per_s"] for g in got)
    return {"clients": clients, "per_request": per_request, "requests": len(lat), "img_per_s": rps * per_request,
            "req_per_s": rps, "failures": sum(g["failures"] for g in got), **percentiles(lat),
            "cpu_clients_ms_per_img": sum(g["cpu_s"] for g in got) * 1e3 / max(1, len(lat) * per_request),
            "failure_reasons": "; ".join(g["failure_reasons"] for g in got if g["failure_reasons"])[:300]}


def gpu_memory_mib() -> list[int]:
    if not shutil.which("nvidia-smi"):
        return []
    r = subprocess.run(["nvidia-smi", "--query-compute-apps=used_memory", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True)
    return [int(v) for v in r.stdout.split() if v.strip().isdigit()]


