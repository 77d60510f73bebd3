"""A multi-image request over a real TorchServe with a GPU worker and the GPU decode (scripts/gpu_serving_bench.sh
step 2 runs it after the served benchmark, once TorchServe and Java are unpacked there; skipped without CUDA,
TorchServe or Java).

One JSON request of five images, the third a truncated JPEG: the answer lists five results in order, the bad
one a 400 with the CPU path's reason, the others the same detections as the in-process Detector with the
CPU decode gives (polygons within 2 px: the GPU decoders' chroma differs slightly from libjpeg-turbo's)."""

import base64
import io

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from polydet.serving.server import missing_prerequisite

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(missing_prerequisite() is not None, reason=str(missing_prerequisite()))]


def test_multi_image_request_on_the_gpu(tmp_path):
    from polydet.bench.serve import ServeSettings, served
    from polydet.data.synth import SynthConfig, render_sample
    from polydet.pipeline import Detector
    from polydet.serving.archive import SERVED, ArchiveJob, build_archives

    build_archives(ArchiveJob(tmp_path / "store", tmp_path / "build", weights="weights/polydet_main_area.pt",
                              formats=("torchscript",), imgsz=224, service=SERVED))
    rng = np.random.default_rng(5)
    jpegs = []
    for _ in range(4):
        img, _ = render_sample(rng, SynthConfig(long_side=(640, 640), aspect=(4 / 3, 4 / 3), jpeg_p=0.0))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    sent = jpegs[:2] + [jpegs[2][:3000]] + jpegs[2:]
    artifact = next((tmp_path / "build" / "polydet-1.0").glob("*.torchscript"))
    ref = Detector.from_artifact(artifact, device="cuda", gpu_decode=False).detect(jpegs)
    with served(tmp_path / "store", ServeSettings(workers=1, batch_size=4, max_batch_delay=5, gpu=True)) as ts:
        r = requests.post(f"{ts.inference_url}/predictions/polydet", timeout=120,
                          headers={"Authorization": f"Bearer {ts.tokens.inference}"},
                          json={"images": [base64.b64encode(j).decode() for j in sent]})
        log = (ts.log_dir / "model_log.log").read_text(errors="replace")
    assert r.status_code == 200, r.text[:300]
    results = r.json()["results"]
    assert len(results) == 5
    assert results[2]["code"] == 400 and results[2]["error"].startswith("corrupt JPEG image")
    assert "preprocess GpuPreprocessor" in log  # the worker's description: the GPU decode ran
    for got, want in zip(results[:2] + results[3:], ref):
        assert len(got["detections"]) == len(want) > 0
        polys = np.array([d["polygon"] for d in got["detections"]])
        assert np.abs(polys - want.polygons).max() <= 2.0
