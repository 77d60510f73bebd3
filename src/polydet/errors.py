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


# Error messages go back to the client: a value of the client's is quoted in at most this many characters
# (a 300 KB option value echoed whole made TorchServe cut the response and reset the connection).
QUOTE_LIMIT = 80
MESSAGE_LIMIT = 300


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """A client's value for an error message: its repr, nested containers and long strings abbreviated
    (``reprlib``), then cut to ``limit`` characters. Never raises (a huge int's repr does)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel, r.maxlist, r.maxdict = limit, limit, 2, 6, 4
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - e.g. ValueError for an int of more than 4,300 digits
        text = f"<{type(value).__name__}>"
    return bounded(text, limit)


def bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked with '...'."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
