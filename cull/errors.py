"""Errors that tell the user what was wrong, what we got, and how to fix it."""


class CullError(ValueError):
    """Base class for every error cull raises on bad user input."""


class RuleError(CullError):
    """A phrase, regex or rule file is malformed."""


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def missing_extra(module: str, extra: str) -> MissingExtraError:
    """The error for an optional dependency that is not installed: it names the pip extra."""
    return MissingExtraError(
        f"cull needs the optional package {module!r} for this feature, but it is not installed. "
        f"Fix: pip install 'cull-lm[{extra}]'"
    )


def require(module: str, extra: str):
    """Import an optional dependency, or raise an error that names the pip extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised by the subprocess test
        raise missing_extra(module, extra) from exc
