import pytest


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """Random-weight models exported once per session: {"ckpt", "torchscript", "onnx", "onnx_dynamic"}."""
    from polydet.export import export, load_or_build
    from polydet.model import save_checkpoint

    d = tmp_path_factory.mktemp("artifacts")
    model, info = load_or_build("random", seed=0)
    save_checkpoint(d / "random.pt", model, info)
    out = {"ckpt": d / "random.pt"}
    out["torchscript"], _ = export(str(d / "random.pt"), "torchscript", out=d / "random.torchscript")
    out["onnx"], _ = export(str(d / "random.pt"), "onnx", out=d / "random.onnx")
    out["onnx_dynamic"], _ = export(str(d / "random.pt"), "onnx", out=d / "random_dyn.onnx", dynamic=True)
    return out
