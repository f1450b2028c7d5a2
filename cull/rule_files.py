"""Reading rule files: .txt, .json and .yaml, with errors that point at the offending line."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import RuleError, require
from .rules import BAN, BIAS, Rule, make_rule, multiplier_to_delta


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RuleError(f"phrase file {str(path)!r} does not exist; check the path") from None
    except OSError as exc:
        raise RuleError(f"cannot read phrase file {str(path)!r}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RuleError(
            f"{path}: line {line}: byte 0x{data[exc.start]:02x} at offset {exc.start} is not valid UTF-8; "
            "save the file as UTF-8"
        ) from None


def read_rule_file(path, action: str | None, bias: float | None, allow_symbols: bool = False) -> list[Rule]:
    path = Path(path)
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuleError(f"{path}: line {exc.lineno}, column {exc.colno}: malformed JSON: {exc.msg}") from None
        return _from_data(data, path, action, bias, allow_symbols)
    if suffix in (".yaml", ".yml"):
        yaml = require("yaml", "hf")
        try:
            data = yaml.safe_load(text)
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
