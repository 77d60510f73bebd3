"""Typed errors. Each maps to one HTTP status so every transport reports it the same way."""


class PolydetError(Exception):
    """Base class. ``http_status`` is what a server should answer for this error."""

    http_status = 500


class InvalidInputError(PolydetError):
    """The caller sent something we cannot use (undecodable image, bad threshold...). HTTP 400."""

    http_status = 400


class ImageTooLargeError(InvalidInputError):
    """The image declares more pixels than the configured maximum. HTTP 413."""

    http_status = 413


class ConfigError(PolydetError):
    """A configuration file or option is wrong (unknown key, bad value). Raised at load time."""

    http_status = 500


class ModelLoadError(PolydetError):
    """A model artifact or checkpoint cannot be loaded (missing keys, wrong shapes, bad format)."""

    http_status = 500


class MissingDependencyError(PolydetError, ImportError):
    """An optional runtime is not installed. The message names the package to install."""

    http_status = 500


def require(module: str, package: str, extra: str | None = None):
    """Import ``module`` lazily; raise MissingDependencyError naming what to install if absent."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f"pip install {package}" if extra is None else f"pip install 'polydet[{extra}]' (or {package})"
        raise MissingDependencyError(f"{module!r} is required for this feature but is not installed: {hint}") from e


class ExportError(PolydetError):
    """An export failed or its artifact disagrees with the eager model beyond tolerance."""

    http_status = 500
