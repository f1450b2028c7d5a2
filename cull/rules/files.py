"""Reading rule files: .txt, .json and .yaml, with errors that point at the offending line.

Rule files may come from users of a service, so reading one is bounded: a file larger than
`max_file_bytes` (default `MAX_RULE_FILE_BYTES`, 64 MiB; environment variable
``CULL_MAX_RULE_FILE_MB``) is refused before it is read, JSON and YAML nesting deeper than
`MAX_NESTING` is refused before it is parsed, and YAML aliases (``*name``, the "billion laughs"
bomb) are refused: a phrase list has no use for them.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from cull.errors import RuleError, require
from cull.resources import positive_setting
from cull.rules.rule import BAN, BIAS, Rule, make_rule, multiplier_to_delta


MAX_RULE_FILE_BYTES = 64 * 2**20
MAX_NESTING = 32  # a rule file needs 3 levels ({"phrases": [["phrase", 0.5]]})
# an unterminated string runs to the end of the text, so a string that never closes is one linear
# match instead of a rescan from every later quote (quadratic on '["' + '\\"' * n)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)', re.S)
_YAML_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)|\'(?:[^\']|\'\')*(?:\'|\Z)', re.S)


def max_rule_file_bytes() -> int:
    mib = positive_setting("CULL_MAX_RULE_FILE_MB", MAX_RULE_FILE_BYTES / 2**20, "MiB", RuleError)
    return int(mib * 2**20)


def _read_text(path: Path, max_bytes: int | None = None) -> str:
    limit = max_rule_file_bytes() if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as fh:  # read at most limit + 1 bytes: /dev/zero and pipes end too
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise RuleError(f"phrase file {str(path)!r} does not exist; check the path") from None
    except OSError as exc:
        raise RuleError(f"cannot read phrase file {str(path)!r}: {exc.strerror}") from None
    if len(data) > limit:
        raise RuleError(
            f"phrase file {str(path)!r} is larger than the limit of {limit / 2**20:g} MiB; split it, or "
            "raise the limit with max_file_bytes= (CLI: environment variable CULL_MAX_RULE_FILE_MB)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RuleError(
            f"{path}: line {line}: byte 0x{data[exc.start]:02x} at offset {exc.start} is not valid UTF-8; "
            "save the file as UTF-8"
        ) from None


def _check_nesting(text: str, quoted: re.Pattern, path: Path, kind: str) -> None:
    """Refuse bracket nesting deeper than MAX_NESTING (outside quoted strings), before parsing."""
    import numpy as np

    bare = quoted.sub("", text).encode("utf-8", "surrogatepass")
    b = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int32) - np.isin(b, (ord("]"), ord("}")))
    depth = int(np.cumsum(step).max(initial=0))
    if depth > MAX_NESTING:
        raise RuleError(f"{path}: {kind} nested {depth} levels deep; a rule file needs at most 3 (the limit "
                        f"is {MAX_NESTING}). Write a flat list of phrases")


def _yaml_loader(yaml):
    class NoAliasLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases, so an alias bomb fails at its first '*'."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.events.AliasEvent):
                event = self.peek_event()
                raise RuleError(f"line {event.start_mark.line + 1}, column {event.start_mark.column + 1}: "
                                f"YAML alias *{event.anchor} is not allowed in a phrase file; write the "
                                "phrases out")
            return super().compose_node(parent, index)

    return NoAliasLoader


def read_rule_file(path, action: str | None, bias: float | None, allow_symbols: bool = False,
                   max_file_bytes: int | None = None) -> list[Rule]:
    path = Path(path)
    text = _read_text(path, max_file_bytes)
    suffix = path.suffix.lower()
    if suffix == ".json":
        _check_nesting(text, _JSON_STRING, path, "JSON")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuleError(f"{path}: line {exc.lineno}, column {exc.colno}: malformed JSON: {exc.msg}") from None
        except RecursionError:
            raise RuleError(f"{path}: JSON nested too deeply; write a flat list of phrases") from None
        return _from_data(data, path, action, bias, allow_symbols)
    if suffix in (".yaml", ".yml"):
        yaml = require("yaml", "hf")
        _check_nesting(text, _YAML_QUOTED, path, "YAML")
        try:
            data = yaml.load(text, Loader=_yaml_loader(yaml))  # noqa: S506 (a SafeLoader subclass)
        except RuleError as exc:
            raise RuleError(f"{path}: {exc}") from None
        except RecursionError:
            raise RuleError(f"{path}: YAML nested too deeply; write a flat list of phrases") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            raise RuleError(f"{path}: {where}malformed YAML: {getattr(exc, 'problem', exc)}") from None
        return _from_data(data, path, action, bias, allow_symbols)
    if suffix in (".txt", ".text", ""):
        return _from_txt(text, path, action, bias, allow_symbols)
    raise RuleError(f"{path}: unknown phrase file type {suffix!r}; use .txt, .json, .yaml or .yml")


def _from_txt(text: str, path: Path, action, bias, allow_symbols) -> list[Rule]:
    """One phrase a line; an optional tab then a delta (a number) or 'ban'. '#' starts a comment line."""
    rules = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}: line {n}"
        phrase, _, extra = line.partition("\t")
        act, delta = action or BAN, bias
        extra = extra.strip()
        if extra and action is None:
            if extra.lower() == BAN:
                act = BAN
            else:
                try:
                    delta = float(extra)
                except ValueError:
                    raise RuleError(
                        f"{where}: after the tab expected a logit delta (e.g. -3.5) or 'ban', got {extra!r}"
                    ) from None
                act = BIAS
        rules.append(make_rule(phrase, act, delta, source=where, allow_symbols=allow_symbols))
    return rules


def _from_data(data, path: Path, action, bias, allow_symbols) -> list[Rule]:
    default_action = action
    if isinstance(data, dict):
        if "phrases" not in data and "rules" not in data:
            raise RuleError(f"{path}: expected a list of phrases, or an object with a 'phrases' list")
        default_action = action or data.get("action")
        bias = bias if bias is not None else data.get("bias")
        data = data.get("phrases", data.get("rules"))
    if not isinstance(data, list):
        raise RuleError(f"{path}: expected a list of phrases, got {type(data).__name__}")
    counts = bool(data) and all(
        isinstance(x, list) and len(x) == 2 and isinstance(x[1], int) and not isinstance(x[1], bool) and x[1] >= 1
        for x in data
    ) and any(x[1] > 1 for x in data)
    rules = []
    for i, item in enumerate(data):
        where = f"{path}: item {i + 1}"
        if isinstance(item, str):
            act = default_action or (BIAS if bias is not None else BAN)
            rules.append(make_rule(item, act, bias, source=where, allow_symbols=allow_symbols))
        elif isinstance(item, list):
            if len(item) != 2 or not isinstance(item[0], str):
                raise RuleError(f"{where}: expected [phrase, multiplier], got {item!r}")
            if counts:  # antislop's word/phrase frequency lists: [phrase, count]
                act = default_action or (BIAS if bias is not None else BAN)
                rules.append(make_rule(item[0], act, bias, source=where, allow_symbols=allow_symbols))
            else:
                delta = multiplier_to_delta(item[1], where)
                act = action or (BAN if delta == -math.inf else BIAS)
                rules.append(make_rule(item[0], act, delta, source=where, allow_symbols=allow_symbols))
        elif isinstance(item, dict):
            rules.append(_from_object(item, where, action, default_action, bias, allow_symbols))
        else:
            raise RuleError(f"{where}: expected a string, [phrase, multiplier] or an object, got {item!r}")
    return rules


def _from_object(item: dict, where, action, default_action, bias, allow_symbols) -> Rule:
    unknown = set(item) - {"phrase", "regex", "action", "delta", "bias", "multiplier"}
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)}; allowed: phrase, regex, action, delta, multiplier")
    if ("phrase" in item) == ("regex" in item):
        raise RuleError(f"{where}: give exactly one of 'phrase' or 'regex', got {sorted(item)}")
    text = item["phrase"] if "phrase" in item else item["regex"]
    if not isinstance(text, str):
        raise RuleError(f"{where}: the phrase must be a string, got {text!r}")
    if "regex" in item:
        text = "re:" + text
    delta = item.get("delta", item.get("bias", bias))
    if "multiplier" in item:
        delta = multiplier_to_delta(item["multiplier"], where)
    act = action or item.get("action") or default_action or (BIAS if delta is not None else BAN)
    return make_rule(text, act, delta, source=where, allow_symbols=allow_symbols)
