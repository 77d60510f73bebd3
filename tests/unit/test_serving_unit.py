"""Serving helpers without a server: dewarp, config.properties handling, tokens, ports, CLI parsers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from polydet.errors import InvalidInputError
from polydet.ops.warp import dewarp, rectified_size
from polydet.serving.server import (Ports, ServerError, Tokens, default_config, effective_properties, read_properties,
                                    write_properties)
from polydet.serving.storeguard import jar_path

REPO = Path(__file__).resolve().parents[2]


def test_dewarp_of_an_axis_aligned_rectangle_is_the_crop():
    img = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    out = dewarp(img, [[10, 20], [70, 20], [70, 60], [10, 60]], max_side=None)
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, img[20:60, 10:70])


def test_dewarp_rectifies_a_rotated_quad_and_caps_its_size():
    import cv2

    img = np.zeros((400, 400), np.uint8)
    quad = np.array([[200, 40], [360, 200], [200, 360], [40, 200]], np.float64)  # a square turned 45 degrees
    cv2.fillConvexPoly(img, quad.astype(np.int32), 255)
    assert rectified_size(quad) == (226, 226)
    out = dewarp(img, quad, max_side=100)
    assert out.shape == (100, 100)
    assert out[3:-3, 3:-3].min() == 255


@pytest.mark.parametrize("bad", [[[0, 0], [1, 1], [2, 2]], [[0, 0], [10, 0], [20, 0], [30, 0]],
                                 [[0, 0], [np.nan, 0], [1, 1], [0, 1]]])
def test_dewarp_refuses_degenerate_polygons(bad):
    with pytest.raises(InvalidInputError):
        dewarp(np.zeros((10, 10, 3), np.uint8), bad)


def test_repo_config_properties_is_loopback_token_protected_and_restricted():
    props = read_properties(REPO / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("7070", "7071")
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "true"
    assert props["allowed_urls"] == "^$" and props["metrics_mode"] == "prometheus"
    assert "-Xmx" in props["vmargs"]
    resolved = effective_properties(REPO / "config.properties")
    assert resolved["model_store"] == str(REPO / "model_store")
    assert Path(resolved["metrics_config"]).is_file() and Path(resolved["metrics_config"]).name == "metrics.yaml"
    vmargs = resolved["vmargs"].split()
    assert vmargs[:len(props["vmargs"].split())] == props["vmargs"].split()
    log4j = next(a for a in vmargs if a.startswith("-Dlog4j.configurationFile="))
    assert Path(log4j.split("=", 1)[1]).is_file()
    (agent,) = [a for a in vmargs if a.startswith("-javaagent:")]
    assert agent == f"-javaagent:{jar_path()}" and jar_path().is_file()
    assert not any(a.startswith("-javaagent:") for a in effective_properties(REPO / "config.properties",
                                                                             store_guard=False)["vmargs"].split())
    assert default_config().resolve() == (REPO / "config.properties").resolve()  # the package ships this file


def test_properties_round_trip(tmp_path):
    props = {"a": "1", "vmargs": "-Xmx1g -Dx=y", "allowed_urls": "^$"}
    assert read_properties(write_properties(props, tmp_path / "c.properties")) == props


def test_free_ports_are_distinct():
    p = Ports.free()
    assert len({p.inference, p.management, p.metrics, p.grpc_inference, p.grpc_management}) == 5
    assert Ports.from_properties(p.properties()) == p


def test_tokens_wait_for_the_key_file(tmp_path):
    f = tmp_path / "key_file.json"
    f.write_text("")  # TorchServe creates it empty for a moment
    content = {"management": {"key": "m"}, "inference": {"key": "i"}, "API": {"key": "a"}}
    threading.Timer(0.3, lambda: f.write_text(json.dumps(content))).start()
    t = time.monotonic()
    assert Tokens.read(f, timeout=5) == Tokens("i", "m", "a")
    assert time.monotonic() - t >= 0.25
    with pytest.raises(ServerError):
        Tokens.read(tmp_path / "missing.json", timeout=0.2)


def test_cli_parsers():
    from polydet.serving.commands import make_client_parser, make_manage_parser

    a = make_manage_parser().parse_args(["--grpc", "register", "x.mar", "--name", "m", "--workers", "2"])
    assert (a.grpc, a.action, a.archive, a.name, a.workers) == (True, "register", "x.mar", "m", 2)
    a = make_manage_parser().parse_args(["scale", "polydet", "2.0", "--min", "1", "--max", "3"])
    assert (a.name, a.version, a.min_worker, a.max_worker) == ("polydet", "2.0", 1, 3)
    a = make_client_parser().parse_args(["grpc", "a.jpg", "b.jpg", "--target", "127.0.0.1:1"])
    assert (a.transport, a.images, a.target) == ("grpc", ["a.jpg", "b.jpg"], "127.0.0.1:1")
    from polydet.serving.commands import client_main

    with pytest.raises(SystemExit):  # thresholds need the JSON form
        client_main(["rest", "a.jpg", "--mode", "raw", "--conf", "0.5"])
