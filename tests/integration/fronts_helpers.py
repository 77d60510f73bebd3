"""Shared by test_fronts_kserve.py and test_fronts_triton.py: the artifact (the bundled weights exported to
TorchScript), the in-process oracle (DetectionService of the same artifact and handler section), the images,
and starting a front in its venv on free loopback ports with its own TMPDIR.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from serving_helpers import BUNDLED_WEIGHTS, assert_same_result, encode, page_image, png_bytes

# The handler section both the front and the oracle run with: a low conf so every image has several
# detections to compare (the bundled model finds the page with ~0.97 and weaker candidates below).
SECTION = {"options": {"conf": 0.01, "max_det": 20}}
# The fronts run the same artifact with the same torch (2.13.0 CPU) and polydet as the oracle; their venvs hold
# other builds of numpy and the decoders (the triton venv: numpy 1.26, opencv-python-headless < 4.12).
# Measured on the images below (KServe and Triton alike): polygons equal to the oracle's cast to FP32 (the
# layout's dtype; 2.6e-5 px from its float64), scores and class ids equal, the results JSON equal. The bounds
# are those measurements with float32 headroom; the JSON is compared exactly.
PX, SCORE = 1e-4, 1e-6
# Requests that Triton batched together ran through the model as one batch, the oracle's one image at a time:
# measured 1.2e-4 px apart (the same artifact at another batch size). Bounded as TorchServe's served tests.
BATCHED_PX, BATCHED_SCORE = 0.02, 1e-4


@pytest.fixture(scope="session")
def front_artifact(tmp_path_factory):
    """(TorchScript artifact of the bundled weights, model-config.yaml with SECTION)."""
    from polydet.export import export

    root = tmp_path_factory.mktemp("front-artifact")
    path, _ = export(str(BUNDLED_WEIGHTS), "torchscript", out=root / "polydet.torchscript")
    config = root / "model-config.yaml"
    config.write_text(yaml.safe_dump({"handler": SECTION}))
    return path, config


@pytest.fixture(scope="session")
def oracle(front_artifact):
    from polydet.serving.service import DetectionService

    return DetectionService.from_artifact(str(front_artifact[0]), SECTION)


def good_images() -> list[bytes]:
    sample = (BUNDLED_WEIGHTS.parent.parent / "src" / "polydet" / "assets" / "sample.jpg").read_bytes()
    return [sample, encode(page_image(480, 360, seed=1)), png_bytes(page_image(300, 420, seed=2)[..., ::-1].copy())]


GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00" \
      b"\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


def start_front(name: str, tmp_path_factory, front_artifact, extra=()):
    """Build the front's venv (once per POLYDET_ENVS; skip saying why pip could not), start the front on
    free loopback ports in its own folder and TMPDIR, wait until the model is ready."""
    from polydet import envs
    from polydet.fronts import launch

    try:
        envs.ensure(launch.SPECS[name])
    except envs.EnvBuildError as e:
        pytest.skip(f"the {name} venv could not be built: {e}")
    artifact, config = front_artifact
    http, grpc, metrics = launch.free_ports(3)
    front = launch.start(name, artifact, tmp_path_factory.mktemp(f"front-{name}"), http, grpc,
                         metrics if name == "triton" else None, ("--model-config", str(config), *extra))
    try:
        front.wait_ready(timeout=300)
    except BaseException:
        front.stop()
        raise
    return front


def assert_same_as_oracle(outputs: dict, oracle_results: list, px: float = PX, score: float = SCORE) -> None:
    """Served tensors (any leading batch axis) == the in-process typed results, image by image: status, class
    ids, polygons (``px``) and scores (``score``), and each ``results`` element == the REST JSON of the oracle
    (exactly at the default bounds, else within them plus the JSON's rounding)."""
    from polydet.results import ImageError
    from polydet.serving import oip

    per_image = oip.split_outputs(outputs)
    texts = np.asarray(outputs["results"], object).reshape(-1)
    assert len(per_image) == len(oracle_results) == len(texts)
    for got, text, want in zip(per_image, texts, oracle_results):
        body = json.loads(text)
        if isinstance(want, ImageError):
            assert got["status"] == want.status and len(got["scores"]) == 0
            assert body == {"error": want.reason, "code": want.status}
            continue
        assert got["status"] == 200 and len(want.scores) > 0
        np.testing.assert_array_equal(got["class_ids"], want.class_ids)
        np.testing.assert_allclose(got["polygons"], want.polygons.astype(np.float32), atol=px, rtol=0)
        np.testing.assert_allclose(got["scores"], want.scores, atol=score, rtol=0)
        if (px, score) == (PX, SCORE):
            assert body == want.to_dict()
        else:
            assert_same_result(body, want.to_dict(), px=px + 0.01, score=score + 1e-5)


def listening(pids) -> set:
    """(ip, port) of every listening TCP socket of ``pids``."""
    import psutil

    found = set()
    for pid in pids:
        for c in psutil.Process(pid).net_connections("inet"):
            if c.status == psutil.CONN_LISTEN:
                found.add((c.laddr.ip, c.laddr.port))
    return found


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
