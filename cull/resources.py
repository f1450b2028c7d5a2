"""Where cull's files are: the data shipped in the package, the shared test data, and the user cache."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "data"


def data_dir() -> Path:
    """The shared data folder: ``$CULL_DATA_DIR``, else ``<repo>/../shared/data`` (source checkout),
    else ``./../shared/data``. The path is returned even when it does not exist."""
    env = os.environ.get("CULL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    candidates = [PACKAGE_DATA.parents[1].parent / "shared" / "data", Path.cwd() / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]


PROMPTS_DIR = PACKAGE_DATA / "prompts"


def builtin_prompt_sets() -> list[str]:
    """Names of cull's built-in prompt and text sets (``cull/data/prompts/<name>.json``).

    >>> builtin_prompt_sets()
    ['heldout', 'neutral_texts', 'train']
    """
    return sorted(f.stem for f in PROMPTS_DIR.glob("*.json"))


def prompt_file(spec) -> Path:
    """A prompt or text file named on the command line: ``spec`` itself when that path exists, else the
    built-in set of that name. The path is returned even when neither exists: the caller's error
    says what to pass.

    >>> prompt_file("heldout") == PROMPTS_DIR / "heldout.json"
    True
    """
    path = Path(spec)
    if not path.exists() and (PROMPTS_DIR / f"{spec}.json").is_file():
        return PROMPTS_DIR / f"{spec}.json"
    return path


def cache_dir() -> Path:
    """cull's cache (compiled tables, the default model): ``$CULL_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/cull``, else ``~/.cache/cull``."""
    env = os.environ.get("CULL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
    return base / "cull"


def positive_setting(name: str, default: float, unit: str, error=ValueError) -> float:
    """An operator's numeric environment setting (e.g. CULL_REGEX_TIMEOUT_S): `default` when unset,
    else a positive number, or `error` saying what to write."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise error(f"{name} must be a positive number of {unit}, got {raw!r}")
    return value
