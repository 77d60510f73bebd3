import json

import cv2
import numpy as np

from polydet.cli import main


def test_export_then_predict_json_and_draw(tmp_path, capsys, artifacts):
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(artifacts["ckpt"]), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "parity vs eager model" in printed
    rng = np.random.default_rng(1)
    paths = []
    for i, shape in enumerate([(200, 300, 3), (321, 123, 3)]):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 255, shape, dtype=np.uint8))
        paths.append(str(p))
    code = main(["predict", "--model", str(out), *paths, "--json", "--conf", "0.0003", "--draw", str(tmp_path / "draw")])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["image"] for d in lines] == paths
    assert [(d["width"], d["height"]) for d in lines] == [(300, 200), (123, 321)]
    for d in lines:
        assert set(d) == {"image", "width", "height", "detections"}
        scores = [x["score"] for x in d["detections"]]
        assert scores and scores == sorted(scores, reverse=True) and all(s > 0.0003 for s in scores)
        for x in d["detections"]:
            assert set(x) == {"class_id", "class_name", "score", "polygon"} and len(x["polygon"]) == 4
    drawn = cv2.imread(str(tmp_path / "draw" / "img1.jpg"))
    assert drawn.shape == (321, 123, 3)


def test_predict_reports_bad_files_and_exits_nonzero(tmp_path, capsys, artifacts):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((50, 60, 3), np.uint8))
    code = main(["predict", "--model", str(artifacts["torchscript"]), str(bad), str(good), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.jpg: corrupt or truncated JPEG" in captured.err
    assert json.loads(captured.out)["image"] == str(good)


def test_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    code = main(["predict", "--model", str(tmp_path / "missing.onnx"), "x.jpg"])
    assert code == 2 and "polydet predict: error: model artifact not found" in capsys.readouterr().err
