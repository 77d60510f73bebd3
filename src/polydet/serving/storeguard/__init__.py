"""The store guard: a Java agent that keeps TorchServe 0.12.0 from registering anything but the
model store's own ``.mar`` files (SECURITY.md, "Model archives run code").

TorchServe registers a ``url`` that names a directory anywhere on disk as an exploded model, and a
store entry that is a symbolic link to anywhere, whatever ``allowed_urls`` says; the model's handler
then runs in a worker. The agent (``-javaagent:`` in config.properties' ``vmargs``) swaps in a
replacement for the frontend class every registration passes through first, which refuses all but the
bare name of a regular ``.mar`` file directly in the store. Sources: ``java/``; the jar is rebuilt by
``python -m polydet.serving.storeguard.build`` (needs a JDK and TorchServe's jar) and committed, so
that machines with only a JRE (the container, the GPU machine) run it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

JAR_NAME = "polydet-store-guard.jar"


def jar_path() -> Path:
    """The agent jar shipped in the package (a real file: wheels install unzipped)."""
    return Path(str(resources.files(__name__) / JAR_NAME))
