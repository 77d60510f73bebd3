"""The export format table: rows consistent with the backends, the CLI built from it, precisions and graph
passes refused or recorded as the table says."""

import dataclasses
import json
import sys
from pathlib import Path

import onnx
import pytest
import torch

from polydet.backends import MODULES, backend_class
from polydet.backends.base import META_KEY
from polydet.cli import main, make_parser
from polydet.errors import ConfigError, ExportError
from polydet.export import FORMATS, PASSES, TOLERANCES, ExportFormat, export, load_or_build, verify_artifact
from polydet.export.formats import resolve
from polydet.export.verify import tolerance
from polydet.meta import ModelInfo, Precision


def _export_choices(parser) -> dict:
    """{option: choices} of the `export` subparser, read from argparse's own actions."""
    sub = next(a for a in parser._actions if a.dest == "command")
    return {a.option_strings[0]: a.choices for a in sub.choices["export"]._actions if a.option_strings}


def test_rows_agree_with_the_backends():
    rows = {"torchscript": (".torchscript", "torchscript", ""), "onnx": (".onnx", "onnxruntime", "_onnx"),
            "openvino": (".xml", "openvino", "_openvino")}  # (a row each runtime adds is checked by the loop)
    assert list(FORMATS)[:2] == ["torchscript", "onnx"]
    assert {n: (f.suffix, f.backend, f.archive_suffix) for n, f in FORMATS.items() if n in rows} == rows
    for name, row in FORMATS.items():
        assert isinstance(row, ExportFormat) and row.name == name
        assert row.backend in MODULES
        # the backend the row names is the one that opens a file with the row's suffix
        assert backend_class(Path("m" + row.suffix)).__module__ == f"polydet.backends.{row.backend}"
        assert callable(resolve(row.exporter))
        assert set(row.passes) <= set(PASSES)
        # the first is the default: fp32 wherever the runtime has it (an RK3588 NPU has none)
        assert row.precisions[0] is (Precision.FP32 if name != "rknn" else Precision.FP16)
        assert set(row.precisions) <= set(Precision)
    fp32, fp16, int8 = Precision.FP32, Precision.FP16, Precision.INT8
    offered = {"torchscript": (fp32, fp16), "onnx": (fp32, fp16, int8), "tensorrt": (fp32, fp16, int8),
               "openvino": (fp32, fp16, int8), "ncnn": (fp32, fp16), "mnn": (fp32,),
               "aoti": (fp32, fp16), "rknn": (fp16, int8)}  # MNN fp16: see its row
    assert {n: f.precisions for n, f in FORMATS.items()} == {n: offered[n] for n in FORMATS}
    with pytest.raises(dataclasses.FrozenInstanceError):
        FORMATS["onnx"].suffix = ".x"


def test_cli_choices_come_from_the_table(monkeypatch):
    choices = _export_choices(make_parser())
    assert choices["--format"] == list(FORMATS) and choices["--format"][:2] == ["torchscript", "onnx"]
    assert choices["--precision"] == ["fp32", "fp16", "int8"]
    monkeypatch.setitem(FORMATS, "fake", dataclasses.replace(FORMATS["onnx"], name="fake"))
    parser = make_parser()
    assert _export_choices(parser)["--format"] == [*choices["--format"], "fake"]
    args = parser.parse_args(["export", "--weights", "w", "--format", "fake", "--passes", "a,b,"])
    assert args.format == "fake" and args.passes == ("a", "b") and args.precision is None


def test_a_precision_the_format_lacks_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^torchscript cannot be exported in int8: it supports fp32, fp16$"):
        export("random", "torchscript", out=tmp_path / "x.torchscript", precision=Precision.INT8)
    with pytest.raises(ConfigError, match=r"unknown precision 'fp64': fp32, fp16, int8"):
        export("random", "onnx", out=tmp_path / "x.onnx", precision="fp64")
    assert main(["export", "--weights", "random", "--format", "torchscript", "--precision", "int8",
                 "--out", str(tmp_path / "x.torchscript")]) == 2
    assert capsys.readouterr().err == "polydet export: error: torchscript cannot be exported in int8: it supports fp32, fp16\n"
    assert not list(tmp_path.iterdir())


def test_half_is_a_deprecated_alias_of_precision_fp16(tmp_path, capsys):
    assert main(["export", "--weights", "random", "--half", "--out", str(tmp_path / "x.torchscript")]) == 2
    assert capsys.readouterr().err == (
        "polydet export: --half is deprecated, use --precision fp16\n"
        "polydet export: error: --precision fp16 needs --device cuda (fp16 convolutions are a GPU feature)\n")
    assert main(["export", "--weights", "random", "--half", "--precision", "fp32", "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.splitlines()[1] == "polydet export: error: --half conflicts with --precision fp32"


def test_unknown_or_unsupported_pass_is_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"^unknown graph pass 'nosuch': known passes: slim, simplify, optimize, "
                                          r"fuse-preprocess, drop-sigmoid$"):
        export("random", "onnx", out=tmp_path / "x.onnx", passes=["nosuch"])
    with pytest.raises(ConfigError, match="sequence of pass names"):
        export("random", "onnx", out=tmp_path / "x.onnx", passes="slim")
    assert main(["export", "--weights", "random", "--format", "onnx", "--passes", "nosuch",
                 "--out", str(tmp_path / "x.onnx")]) == 2
    assert "unknown graph pass 'nosuch'" in capsys.readouterr().err
    monkeypatch.setitem(PASSES, "stamp_a", f"{__name__}:stamp_a")  # known, but no row lists it
    with pytest.raises(ConfigError, match=r"^torchscript cannot run graph pass 'stamp_a': its passes: none$"):
        export("random", "torchscript", out=tmp_path / "x.torchscript", passes=["stamp_a"])
    assert not list(tmp_path.iterdir())


# Trivial but real ONNX graph passes for the mechanism: each appends its name to the graph's doc_string.
def _stamp(path: Path, name: str, keep_meta: bool = True) -> None:
    m = onnx.load(str(path))
    m.graph.doc_string = ",".join(filter(None, [m.graph.doc_string, name]))
    if not keep_meta:
        del m.metadata_props[:]
    onnx.save(m, str(path))


def stamp_a(path: Path, info: ModelInfo) -> None:
    _stamp(path, "a")


def stamp_b(path: Path, info: ModelInfo) -> None:
    _stamp(path, "b")


def drop_meta(path: Path, info: ModelInfo) -> None:
    _stamp(path, "drop", keep_meta=False)


@pytest.fixture
def stamp_passes(monkeypatch):
    for name in ("stamp_a", "stamp_b", "drop_meta"):
        monkeypatch.setitem(PASSES, name, f"{__name__}:{name}")
    row = dataclasses.replace(FORMATS["onnx"], passes=("stamp_a", "stamp_b", "drop_meta"))
    monkeypatch.setitem(FORMATS, "onnx", row)


def test_passes_run_in_order_and_are_recorded(tmp_path, stamp_passes):
    out, diff = export("random", "onnx", out=tmp_path / "p.onnx", passes=["stamp_b", "stamp_a", "stamp_b"])
    m = onnx.load(str(out))
    assert m.graph.doc_string == "b,a,b"
    meta = json.loads({p.key: p.value for p in m.metadata_props}[META_KEY])
    assert meta["passes"] == ["stamp_b", "stamp_a", "stamp_b"] and meta["precision"] == "fp32"
    assert ModelInfo.from_json(json.dumps(meta)).passes == ("stamp_b", "stamp_a", "stamp_b")
    assert diff["corners_px"] < TOLERANCES["fp32"]["corners_px"]


def test_a_pass_that_loses_the_metadata_fails_the_export(tmp_path, stamp_passes):
    with pytest.warns(UserWarning, match="no polydet metadata"):
        with pytest.raises(ExportError, match="metadata .* is not what was exported"):
            export("random", "onnx", out=tmp_path / "p.onnx", passes=["stamp_a", "drop_meta"])


def test_no_passes_and_fp32_recorded_and_default_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, diff = export("random", "torchscript", imgsz=256)
    assert out == Path("random_256.torchscript") and out.is_file()
    extra = {META_KEY: ""}
    torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra[META_KEY])
    assert meta["precision"] == "fp32" and meta["passes"] == [] and "half" not in meta
    model, _ = load_or_build("random", seed=0)
    assert verify_artifact(out, model, (256, 256), precision=Precision.FP32) == diff


def _backend(module: str, precision: Precision, device: str):
    """A stand-in backend of polydet.backends.<module>: only what the tolerance choice reads."""
    fake = type("Fake", (), {"__module__": f"polydet.backends.{module}"})()
    fake.precision, fake.device = precision, torch.device(device)
    return fake


@pytest.mark.parametrize("module, precision, device, key", [
    ("torchscript", Precision.FP32, "cpu", "fp32"), ("torchscript", Precision.FP32, "cuda", "tf32"),
    ("torchscript", Precision.FP16, "cuda", "fp16"), ("onnxruntime", Precision.FP32, "cuda", "fp32"),
    ("onnxruntime", Precision.FP16, "cuda", "fp16"), ("eager", Precision.FP32, "cuda", "fp32"),
])
def test_tolerance_follows_the_row_and_precision(module, precision, device, key):
    assert tolerance(_backend(module, precision, device)) is TOLERANCES[key]


def test_int8_has_its_own_tolerance_and_an_unknown_key_is_refused(monkeypatch):
    assert tolerance(_backend("onnxruntime", Precision.INT8, "cpu")) is TOLERANCES["int8"]
    monkeypatch.delitem(TOLERANCES, "int8")
    with pytest.raises(ExportError, match="no parity tolerance for int8"):
        tolerance(_backend("onnxruntime", Precision.INT8, "cpu"))


def test_formats_import_without_torch():
    import subprocess

    code = ("import sys; from polydet.export import FORMATS; from polydet.cli import make_parser; make_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(sorted(FORMATS))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{sorted(FORMATS)}\n"
