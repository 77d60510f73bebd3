"""polydet.serving.oip: the shared Open Inference Protocol layout, its validation and conversions."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from polydet.errors import InvalidInputError
from polydet.results import Detections, ImageError
from polydet.serving import oip
from polydet.serving.service import DetectionService

NAMES = ("page", "photo")


def dets(polys, scores, classes, w=640, h=480) -> Detections:
    return Detections(w, h, np.asarray(polys, np.float64).reshape(-1, 4, 2), np.asarray(scores, np.float32),
                      np.asarray(classes, np.int64), NAMES)


QUAD_A = [[10.25, 20.5], [300.125, 22], [310, 400.75], [12, 390]]
QUAD_B = [[1, 2], [3, 4], [5, 6], [7, 8.5]]


def test_the_layout_as_data():
    assert oip.INPUT_NAMES == ("images", "options")
    assert oip.OUTPUT_NAMES == ("polygons", "scores", "class_ids", "counts", "status", "results")
    assert [(t.datatype, t.shape, t.optional) for t in oip.INPUTS] == [("BYTES", (-1,), False),
                                                                        ("BYTES", (1,), True)]
    assert [(t.datatype, t.shape) for t in oip.OUTPUTS] == [("FP32", (-1, 4, 2)), ("FP32", (-1,)), ("INT32", (-1,)),
                                                            ("INT32", (-1,)), ("INT32", (-1,)), ("BYTES", (-1,))]
    assert oip.SPECS["polygons"].dtype == np.float32 and oip.SPECS["results"].dtype == object


def test_model_metadata_is_the_v2_shape_and_names_every_tensor():
    md = oip.model_metadata("polydet", versions=["1.0"])
    assert md == {
        "name": "polydet", "versions": ["1.0"], "platform": "polydet",
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [-1]},
                   {"name": "options", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "polygons", "datatype": "FP32", "shape": [-1, 4, 2]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1]},
                    {"name": "class_ids", "datatype": "INT32", "shape": [-1]},
                    {"name": "counts", "datatype": "INT32", "shape": [-1]},
                    {"name": "status", "datatype": "INT32", "shape": [-1]},
                    {"name": "results", "datatype": "BYTES", "shape": [-1]}],
        "parameters": {"layout": oip.LAYOUT}}
    json.dumps(md)  # serialisable as it is
    assert oip.model_metadata("m", platform="x")["platform"] == "x"


@pytest.mark.parametrize("images", [
    [b"\xff\xd8a", b"PNG2"],                                         # a list of bytes
    np.array([b"\xff\xd8a", b"PNG2"], dtype=object),                 # KServe: an object array
    np.array([[b"\xff\xd8a"], [b"PNG2"]], dtype=object),             # PyTriton: a batch axis
    np.array([b"\xff\xd8a", b"PNG2"], dtype=np.bytes_),              # numpy bytes_ (no trailing NULs here)
    [base64.b64encode(b"\xff\xd8a").decode(), "data:image/png;base64," + base64.b64encode(b"PNG2").decode()],
])
def test_decode_inputs_takes_every_front_s_form_of_a_bytes_tensor(images):
    assert oip.decode_inputs({"images": images}) == ([b"\xff\xd8a", b"PNG2"], {})


def test_decode_inputs_reads_the_options_object():
    text = b'{"conf": 0.5, "max_det": 3}'
    for options in ([text], text.decode(), np.array([[text]], dtype=object), [base64.b64encode(text).decode()]):
        assert oip.decode_inputs({"images": [b"x"], "options": options}) == ([b"x"], {"conf": 0.5, "max_det": 3})
    assert oip.decode_inputs({"images": b"one"}, {"images": "BYTES"}) == ([b"one"], {})


@pytest.mark.parametrize("tensors, datatypes, reason", [
    ({}, None, "input 'images' (BYTES [N], encoded image files) is missing"),
    ({"images": []}, None, "input 'images' is empty; send at least one image"),
    ({"images": [b"x"], "image": [b"y"]}, None, "unknown input(s) ['image']; this model takes ['images', 'options']"),
    ({"images": [b"x"]}, {"images": "FP32"}, "input 'images' must be BYTES, got 'FP32'"),
    ({"images": [b"x", 3]}, None, "images[1] must be bytes (an encoded image file), got int"),
    ({"images": ["not base64!"]}, None, "images[0] is a string but not base64 of an image file: 'not base64!'"),
    ({"images": [b"x"], "options": [b"{}", b"{}"]}, None,
     "input 'options' must hold exactly one JSON object, got 2 elements"),
    ({"images": [b"x"], "options": [b"conf=1"]}, None, "input 'options' is not JSON: b'conf=1'"),
    ({"images": [b"x"], "options": ["conf=1"]}, None, "input 'options' is not JSON: 'conf=1'"),
    ({"images": [b"x"], "options": [base64.b64encode(b"[1]").decode()]}, None,
     "input 'options' must be a JSON object, got [1]"),
    ({"images": [b"x"], "options": [b"[1, 2]"]}, None, "input 'options' must be a JSON object, got [1, 2]"),
    ({"images": [b"x"], "options": [b"\xff{}"]}, None, "input 'options' is not JSON: b'\\xff{}'"),
    ({"images": [b"x"], "options": [7]}, None, "input 'options' must be BYTES (JSON text), got int"),
    ({"images": [b"x"], "options": [b"[" * 100000]}, None, "input 'options' is 100000 bytes; at most 65536"),
])
def test_decode_inputs_refuses_with_the_reason(tensors, datatypes, reason):
    with pytest.raises(InvalidInputError) as e:
        oip.decode_inputs(tensors, datatypes)
    assert str(e.value) == reason
    assert e.value.http_status == 400


def test_deep_options_json_is_refused_not_crashing():
    deep = b"[" * 30000 + b"]" * 30000  # under the size cap; json's recursion limit is the guard
    with pytest.raises(InvalidInputError, match="input 'options' is not JSON"):
        oip.decode_inputs({"images": [b"x"], "options": [deep]})


def test_encode_outputs_is_ragged_in_image_order_with_errors_in_place():
    a = dets([QUAD_A, QUAD_B], [0.9, 0.4], [0, 1])
    bad = ImageError(415, "not a supported image format")
    c = dets([QUAD_B], [0.75], [1], w=20, h=30)
    empty = dets(np.zeros((0, 4, 2)), [], [])
    out = oip.encode_outputs([a, bad, c, empty])
    assert list(out) == list(oip.OUTPUT_NAMES)
    for name, arr in out.items():
        assert arr.dtype == oip.SPECS[name].dtype, name
    assert out["polygons"].shape == (3, 4, 2)
    np.testing.assert_array_equal(out["polygons"], np.array([QUAD_A, QUAD_B, QUAD_B], np.float32))
    np.testing.assert_array_equal(out["scores"], np.array([0.9, 0.4, 0.75], np.float32))
    assert out["class_ids"].tolist() == [0, 1, 1]
    assert out["counts"].tolist() == [2, 0, 1, 0] and out["status"].tolist() == [200, 415, 200, 200]
    assert out["results"].shape == (4,)
    assert [json.loads(r) for r in out["results"]] == [a.to_dict(), {"error": "not a supported image format",
                                                                      "code": 415}, c.to_dict(), empty.to_dict()]
    assert out["results"][1] == b'{"error":"not a supported image format","code":415}'  # compact, as REST


def test_encode_outputs_of_no_detections_has_empty_tensors_of_the_right_shape():
    out = oip.encode_outputs([ImageError(400, "cannot decode image")])
    assert out["polygons"].shape == (0, 4, 2) and out["polygons"].dtype == np.float32
    assert out["scores"].shape == (0,) and out["class_ids"].shape == (0,) and out["class_ids"].dtype == np.int32
    assert out["counts"].tolist() == [0] and out["status"].tolist() == [400]


def test_split_outputs_inverts_encode_outputs():
    a, c = dets([QUAD_A, QUAD_B], [0.9, 0.4], [0, 1]), dets([QUAD_B], [0.75], [1])
    parts = oip.split_outputs(oip.encode_outputs([a, ImageError(400, "x"), c]))
    assert [p["status"] for p in parts] == [200, 400, 200]
    for part, want in zip([parts[0], parts[2]], [a, c]):
        np.testing.assert_array_equal(part["polygons"], want.polygons.astype(np.float32))
        np.testing.assert_array_equal(part["scores"], want.scores)
        assert part["class_ids"].tolist() == want.class_ids.tolist()
    assert parts[1]["polygons"].shape == (0, 4, 2)
    # flat lists (what a JSON tensor holds) work the same
    flat = {k: np.asarray(v).reshape(-1).tolist() for k, v in oip.encode_outputs([a]).items() if k != "results"}
    np.testing.assert_array_equal(oip.split_outputs(flat)[0]["polygons"], a.polygons.astype(np.float32))
    with pytest.raises(ValueError, match="ragged outputs disagree: 2 polygons, 2 scores, 2 class ids, counts sum to 3"):
        oip.split_outputs({**oip.encode_outputs([a]), "counts": [3]})


def test_request_error_only_when_every_image_failed():
    a = dets([QUAD_A], [0.9], [0])
    first, second = ImageError(413, "too many pixels"), ImageError(400, "cannot decode image")
    assert oip.request_error([first, second]) is first
    assert oip.request_error([first, a]) is None and oip.request_error([a]) is None
    assert oip.request_error([]) is None


def test_the_layout_through_a_detection_service_end_to_end():
    """decode -> DetectionService.detect_images -> encode, with a backend whose answer is known."""
    import cv2

    pytest.importorskip("ts", reason="the QuadBackend lives beside the handler tests, which need torchserve")
    from test_handler_unit import QuadBackend

    from polydet.pipeline import DetectOptions, Detector
    from polydet.serving.config import ServiceConfig
    from polydet.serving.service import DetectionService

    quad = [[20, 30], [200, 40], [190, 200], [30, 190]]
    png = cv2.imencode(".png", np.zeros((448, 448, 3), np.uint8))[1].tobytes()
    service = DetectionService(Detector(QuadBackend(quad)), ServiceConfig(DetectOptions(max_det=5), max_det_limit=5))
    images, overrides = oip.decode_inputs({"images": np.array([png, b"junk", png], dtype=object),
                                           "options": [b'{"conf": 0.5}']})
    results, _ = service.detect_images(images, overrides)
    out = oip.encode_outputs(results)
    assert out["counts"].tolist() == [1, 0, 1] and out["status"].tolist() == [200, 400, 200]
    np.testing.assert_allclose(out["polygons"], np.array([quad, quad], np.float32) * 2, atol=1e-3)
    assert json.loads(out["results"][1])["code"] == 400
    with pytest.raises(InvalidInputError, match="max_det 9 is above this server's limit of 5"):
        service.detect_images(*oip.decode_inputs({"images": [png], "options": [b'{"max_det": 9}']}))


def test_decode_inputs_enforces_the_request_limits():
    assert oip.decode_inputs({"images": [b"ab", b"cd"]}, max_images=2, max_bytes=4) == ([b"ab", b"cd"], {})
    from polydet.serving.parse import RequestTooLargeError

    assert oip.RequestTooLargeError is RequestTooLargeError  # one owner, the REST path's
    for kw, reason in (({"max_images": 1}, "2 images in one request; this server takes at most 1 "
                                           "(handler.max_images_per_request)"),
                       ({"max_bytes": 3}, "the request's images total 4 bytes; this server takes at most 3 per "
                                          "request (handler.max_request_bytes)")):
        with pytest.raises(oip.RequestTooLargeError) as e:
            oip.decode_inputs({"images": [b"ab", b"cd"]}, **kw)
        assert str(e.value) == reason and e.value.http_status == 413


# -- TorchServe's side (polydet.serving.oip_torchserve): the parts that need no server ---------------------

def test_tensors_of_checks_names_shapes_and_data():
    from polydet.serving.oip_torchserve import tensors_of

    t = {"name": "images", "shape": [2], "datatype": "BYTES", "data": ["YQ==", "Yg=="]}
    assert tensors_of([t]) == ({"images": ["YQ==", "Yg=="]}, {"images": "BYTES"})
    one = {**t, "shape": [1], "data": "YQ=="}  # how the kservev2 envelope hands a BYTES tensor over
    assert tensors_of([one], take_first=True) == ({"images": ["YQ=="]}, {"images": "BYTES"})
    for inputs, reason in (
            ({"images": 1}, "\"inputs\" must be a list of tensors, got {'images': 1}"),
            ([t, t], "input names must be unique strings, got 'images'"),
            ([{**t, "shape": "2"}], "input 'images': shape must be a list of integers, got '2'"),
            ([{**t, "shape": [3]}], "input 'images': shape [3] does not match its ['YQ==', 'Yg=='] data")):
        with pytest.raises(InvalidInputError) as e:
            tensors_of(inputs)
        assert str(e.value) == reason
    with pytest.raises(InvalidInputError, match="kservev2 envelope passes on only the first element"):
        tensors_of([{**one, "shape": [2]}], take_first=True)


def test_response_body_has_every_field_torchserve_s_grpcjob_reads():
    from polydet.serving.oip_torchserve import response_body

    a = dets([QUAD_A, QUAD_B], [0.9, 0.4], [0, 1])
    results = [a, ImageError(400, "cannot decode image")]
    body = json.loads(response_body({"id": "x7"}, "polydet", "1.0", results))
    assert list(body) == ["id", "model_name", "model_version", "outputs"]
    assert (body["id"], body["model_name"], body["model_version"]) == ("x7", "polydet", "1.0")
    assert [o["name"] for o in body["outputs"]] == list(oip.OUTPUT_NAMES)
    want = oip.encode_outputs(results)
    for o in body["outputs"]:
        assert set(o) == {"name", "datatype", "shape", "data"} and o["datatype"] == oip.SPECS[o["name"]].datatype
        assert o["shape"] == list(want[o["name"]].shape) and len(o["data"]) == want[o["name"]].size
    by = {o["name"]: o["data"] for o in body["outputs"]}
    assert by["results"] == [a.to_dict(), {"error": "cannot decode image", "code": 400}]  # objects, not strings
    assert np.array(by["polygons"], np.float32).tolist() == want["polygons"].reshape(-1).tolist()  # float32 exact
    assert json.loads(response_body({"id": 5}, "m", "", results))["id"] == ""


def test_batch_error_only_for_a_batch_of_identical_whole_request_failures():
    from polydet.serving.oip_torchserve import Answer, batch_error

    e1, e2 = ImageError(400, "conf must be a number"), ImageError(413, "17 images")
    failed = Answer(400, "{}", e1.reason, e1)
    assert batch_error([failed]) == e1 and batch_error([failed, Answer(400, "{}", e1.reason, e1)]) == e1
    assert batch_error([failed, Answer(413, "{}", e2.reason, e2)]) is None
    assert batch_error([failed, Answer(200, "{}")]) is None  # batched with a success: answered in place
    assert batch_error([Answer(400, "{}", "REST error")]) is None and batch_error([]) is None


def test_answer_tells_describe_oip_and_rest_apart_in_one_batch():
    """A real ts Context and a service over a backend with a known answer; TorchServe's OIP frontend sends
    the ModelInfer as JSON bytes with base64 BYTES, the management API's describe as a header."""
    import cv2

    pytest.importorskip("ts", reason="torchserve is not installed")
    from test_handler_unit import QuadBackend
    from ts.context import Context, RequestProcessor

    from polydet.pipeline import Detector
    from polydet.serving.oip_torchserve import answer

    quad = [[20, 30], [200, 40], [190, 200], [30, 190]]
    png = cv2.imencode(".png", np.zeros((448, 448, 3), np.uint8))[1].tobytes()
    service = DetectionService(Detector(QuadBackend(quad)))
    ctx = Context("polydet", "/nonexistent", {"model": {"modelName": "polydet", "modelVersion": "2.0"}}, 4, None,
                  "0.12.0")
    ctx.request_processor = [RequestProcessor({"describe": "True"}), RequestProcessor({}), RequestProcessor({}),
                             RequestProcessor({})]
    b64 = base64.b64encode(png).decode()
    oip_body = json.dumps({"id": "q", "model_name": "polydet", "inputs": [
        {"name": "images", "shape": [2], "datatype": "BYTES", "data": [b64, base64.b64encode(b"junk").decode()]},
        {"name": "options", "shape": [1], "datatype": "BYTES",
         "data": [base64.b64encode(b'{"max_det": 1}').decode()]}]}).encode()
    data = [{}, {"body": bytearray(oip_body)}, {"body": png}, {"body": json.dumps({"image": b64}).encode()}]
    answers, stats = answer(service, data, ctx)
    assert [a.status for a in answers] == [200, 200, 200, 200] and stats.batch == 4
    assert json.loads(answers[0].body) == oip.model_metadata("polydet", ["2.0"])
    body = json.loads(answers[1].body)
    by = {o["name"]: o["data"] for o in body["outputs"]}
    assert (body["id"], body["model_version"], by["counts"], by["status"]) == ("q", "2.0", [1, 0], [200, 400])
    rest = [json.loads(a.body) for a in answers[2:]]
    assert rest[0] == rest[1] == by["results"][0]  # raw bytes and REST JSON: the same answer as the OIP image
    np.testing.assert_allclose(np.array(by["polygons"]).reshape(4, 2), np.array(quad) * 2, atol=1e-3)


def test_a_fault_in_the_service_is_a_500_in_the_oip_shape_naming_only_its_type():
    from polydet.serving.oip_torchserve import infer

    class Faulty(DetectionService):
        def detect_images(self, images, overrides=None):
            raise RuntimeError("internal detail /secret/path")

    from polydet.serving.config import ServiceConfig

    faulty = Faulty.__new__(Faulty)  # no model needed: it fails before one would run
    faulty.config = ServiceConfig()
    answer, stats = infer(faulty, {"id": "f", "inputs": [
        {"name": "images", "shape": [1], "datatype": "BYTES", "data": ["YQ=="]}]}, "polydet", "1.0")
    by = {o["name"]: o["data"] for o in json.loads(answer.body)["outputs"]}
    assert (answer.status, answer.reason, stats) == (500, "internal error: RuntimeError", None)
    assert by["status"] == [500] and by["results"] == [{"error": "internal error: RuntimeError", "code": 500}]
    assert answer.oip_error.status == 500
