"""Files polydet ships for serving without its checkout: the TorchServe config template, the handler that
goes into every archive, the bundled weights and a sample image.

In the repository these are links to the files at the top (``config.properties``, ``handlers/``,
``weights/``, ``examples/``: one copy each); a wheel holds the files themselves. Read them through
:func:`path`, never through the checkout's layout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIG = "config.properties"  # the secure default TorchServe config (ports and security)
HANDLER = "polydet_handler.py"  # the TorchServe handler archived with every model
WEIGHTS = "polydet_main_area.pt"  # the bundled model (weights/MODEL_CARD.md)
SAMPLE = "sample.jpg"  # a photo with a page in it, for `polydet serve`'s first request


def path(name: str) -> Path:
    """A shipped file, as a real path (wheels install unzipped; None of these are generated)."""
    return Path(str(resources.files(__name__) / name))
