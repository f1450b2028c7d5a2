"""Unicode character properties that the standard library does not expose, as code-point ranges.

`unicodedata` gives normalisation, case folding (via str.casefold) and general categories. Three
more properties define cull's matching: Default_Ignorable_Code_Point (skipped), White_Space (counts
as a space) and the scripts written without spaces (no word boundaries). They ship as ranges in
cull/data/unicode_properties.json, generated from the `regex` package's Unicode database:

    python -m cull.text.unicode_tables            # rewrite the file (needs `regex`)

`import cull` then needs no extra package; tests/text/test_unicode.py checks the file against `regex`.
"""
from __future__ import annotations

import bisect
import json
from functools import lru_cache

from cull.resources import PACKAGE_DATA

PATH = PACKAGE_DATA / "unicode_properties.json"
UNSPACED_SCRIPTS = ("Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar")
PROPERTIES = {
    "ignorable": [r"\p{Default_Ignorable_Code_Point}"],
    "white_space": [r"\p{White_Space}"],
    # Script_Extensions, so that marks and signs shared by these scripts (the kana prolonged sound
    # mark, the combining voiced sound marks) belong to them too
    "unspaced": [rf"\p{{Script_Extensions={s}}}" for s in UNSPACED_SCRIPTS],
}


def compute_ranges() -> dict:
    """The tables from the installed `regex` package (the generator; slow, seconds)."""
    import regex

    out = {"source": f"regex {regex.__version__}", "properties": {}}
    for name, patterns in PROPERTIES.items():
        rx = regex.compile("|".join(patterns))
        ranges, start = [], None
        for cp in range(0x110001):
            hit = cp < 0x110000 and rx.match(chr(cp)) is not None
            if hit and start is None:
                start = cp
            elif not hit and start is not None:
                ranges.append([start, cp - 1])
                start = None
        out["properties"][name] = ranges
    return out


@lru_cache(maxsize=None)
def _tables() -> dict[str, tuple[list[int], list[int]]]:
    data = json.loads(PATH.read_text())
    return {name: ([a for a, _ in rs], [b for _, b in rs]) for name, rs in data["properties"].items()}


def has_property(name: str, cp: int) -> bool:
    starts, ends = _tables()[name]
    i = bisect.bisect_right(starts, cp) - 1
    return i >= 0 and cp <= ends[i]


if __name__ == "__main__":
    PATH.write_text(json.dumps(compute_ranges(), separators=(",", ":")) + "\n")
    print(f"wrote {PATH}")
