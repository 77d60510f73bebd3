import os

# Keep torch from oversubscribing the 2-core CI machine when tests run next to a TorchServe.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(items):
    """The suites that start a real TorchServe are marked ``integration`` (``-m "not integration"`` skips them)."""
    import pytest

    for item in items:
        if "tests/integration" in str(item.fspath) or "tests/reliability" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
