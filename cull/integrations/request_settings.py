"""Per-request cull settings for serving engines: parsing, validation, and server-side lists.

A request asks for cull through `SamplingParams.extra_args` (`vllm_xargs` over the OpenAI API):

    extra_args = {"cull": {"phrases": ["delve", "a testament to"], "mode": "ban"}}
    extra_args = {"cull": {"list": "antislop", "mode": "bias", "bias": -5.0}}
    extra_args = {"cull": '{"phrases": ["delve"]}'}                 # the same, as a JSON string
    extra_args = {"cull_phrases": ["delve"], "cull_mode": "ban"}   # flat keys (vllm_xargs allows
                                                                   #  only strings, numbers, lists)

Keys: `phrases` (inline) and/or `list` (names of lists in the folder `$CULL_LISTS_DIR`, any format
`PhraseSet.load` reads), `mode` (`ban` or `bias`; default: the file's own actions, else ban),
`bias` (the delta for `mode=bias`, default -5), `include_prompt` (bool), `whole_words` (bool).
Anything else is an error, so a typo is reported rather than ignored. Booleans accept true/false,
1/0 and "true"/"false" (vLLM's HTTP layer turns a JSON `true` in `vllm_xargs` into 1); `bias`
accepts a number or a numeric string.

Admission runs on the API server's event loop, so its work is bounded by the limits, not by the
request: phrases are counted and measured before any rule is built, and regex literals are
expanded only up to their limit.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..compiler import DEFAULT_MAX_SYMBOLS
from ..errors import CullError
from ..rules import PhraseSet

try:  # imported now, not by the first request with a regex rule (~0.1 s on the server's event loop)
    import regex  # noqa: F401
except ImportError:  # pragma: no cover - the hf extra brings it; a regex rule then says what to install
    pass

KEYS = {"phrases", "list", "mode", "bias", "include_prompt", "whole_words"}
DEFAULT_BIAS = -5.0
MAX_PHRASES = int(os.environ.get("CULL_MAX_REQUEST_PHRASES", "100000"))
LISTS_ENV = "CULL_LISTS_DIR"


@dataclass(frozen=True)
class RequestRules:
    rules: PhraseSet
    include_prompt: bool
    source: str = "inline"  # for the compile log line: "inline" or "list NAME"

    def key(self) -> str:
        return self.rules.fingerprint()


def _fail(msg: str):
    raise CullError(f"cull request settings: {msg}")


def raw_settings(extra_args) -> dict | None:
    """The request's cull settings as a dict, or None when it asks for none."""
    if not extra_args:
        return None
    out = None
    if "cull" in extra_args:
        raw = extra_args["cull"]
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                _fail(f"'cull' is a string but not JSON ({exc.msg} at character {exc.pos}); send an object "
                      "such as {\"phrases\": [\"delve\"]}")
            except RecursionError:
                _fail("'cull' is nested too deeply; send a flat object such as {\"phrases\": [\"delve\"]}")
        if not isinstance(raw, dict):
            _fail(f"'cull' must be an object (or its JSON string), got {type(raw).__name__}")
        out = dict(raw)
    flat = {k[len("cull_"):]: v for k, v in extra_args.items() if isinstance(k, str) and k.startswith("cull_")}
    if flat:
        out = {**(out or {}), **flat}
    return out


def _list_path(name) -> Path:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        _fail(f"'list' must be a plain list name from the server's {LISTS_ENV} folder, got {name!r}")
    folder = os.environ.get(LISTS_ENV)
    if not folder:
        _fail(f"'list' needs the server to set {LISTS_ENV} to a folder of phrase lists; it is not set")
    folder = Path(folder)
    for cand in [folder / name] + [folder / f"{name}{ext}" for ext in (".txt", ".json", ".yaml", ".yml")]:
        if cand.is_file():
            return cand
    names = sorted(p.stem for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    _fail(f"no list {name!r} in {folder}; available: {', '.join(names) or '(none)'}")


_PARSED: "OrderedDict[str, RequestRules]" = OrderedDict()
_PARSED_MAX = 256
_PARSED_MAX_RULES = 200_000  # a few 50k lists: the LRU is bounded by what it holds, not by entries
_parsed_rules = [0]


def parse_settings(extra_args) -> RequestRules | None:
    """Validate a request's settings and build its rules; None when it asks for no cull. Parsed
    settings are kept (an LRU keyed by the settings and the lists' file times): a server sees the
    same list again and again, and building a 50k-phrase PhraseSet takes a tenth of a second."""
    s = raw_settings(extra_args)
    if s is None:
        return None
    if isinstance(s.get("phrases"), list):  # before any work that grows with the request
        _check_size(s["phrases"])
    try:
        key = json.dumps(s, sort_keys=True) + _list_times(s.get("list"))
    except (TypeError, ValueError):
        key = None  # not JSON-able: _parse says what is wrong
    if key is not None and key in _PARSED:
        _PARSED.move_to_end(key)
        return _PARSED[key]
    req = _parse(s)
    if key is not None:
        _PARSED[key] = req
        _parsed_rules[0] += len(req.rules)
        while len(_PARSED) > 1 and (len(_PARSED) > _PARSED_MAX or _parsed_rules[0] > _PARSED_MAX_RULES):
            _parsed_rules[0] -= len(_PARSED.popitem(last=False)[1].rules)
    return req


def _list_times(lists) -> str:
    names = [lists] if isinstance(lists, str) else lists if isinstance(lists, list) else []
    folder = os.environ.get(LISTS_ENV, "")
    out = []
    for name in names:
        try:
            out.append(str(_list_path(name).stat().st_mtime_ns))
        except (CullError, OSError):
            out.append("?")
    return folder + "|" + ",".join(out)


def _flag(key: str, v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    _fail(f"'{key}' must be true or false (also accepted: 1/0, \"true\"/\"false\"), got {v!r}")


def _number(key: str, v) -> float:
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            _fail(f"'{key}' must be a finite number (a logit delta such as -5), got {v!r}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        _fail(f"'{key}' must be a finite number (a logit delta such as -5), got {v!r}")
    return float(v)


def _parse(s: dict) -> RequestRules:
    unknown = set(s) - KEYS
    if unknown:
        _fail(f"unknown key(s) {sorted(unknown)}; the keys are {sorted(KEYS)}")
    mode = s.get("mode")
    if mode not in (None, "ban", "bias"):
        _fail(f"'mode' must be 'ban' or 'bias', got {mode!r}")
    bias = s.get("bias", DEFAULT_BIAS if mode == "bias" else None)
    if bias is not None:
        bias = _number("bias", bias)
        if mode != "bias":
            _fail("'bias' is given but 'mode' is not 'bias'; add \"mode\": \"bias\"")
    flags = {key: _flag(key, s.get(key, key == "whole_words")) for key in ("include_prompt", "whole_words")}
    phrases = s.get("phrases", [])
    if isinstance(phrases, str):
        phrases = [phrases]
    if not isinstance(phrases, list):
        _fail("'phrases' must be a list of strings")
    _check_size(phrases)
    if not all(isinstance(p, str) for p in phrases):
        _fail("'phrases' must be a list of strings")
    lists = s.get("list", [])
    lists = [lists] if isinstance(lists, str) else lists
    if not isinstance(lists, list):
        _fail("'list' must be a list name or a list of names")
    rules = []
    for name in lists:
        rules.extend(server_list(name, mode, bias).rules)
        if len(rules) > MAX_PHRASES:
            _too_many(len(rules))
    if phrases:
        rules.extend(PhraseSet(phrases, action=mode or "ban", bias=bias, allow_symbols=True).rules)
    if not rules:
        _fail("no phrases: give 'phrases' (a list of strings) or 'list' (a server-side list name)")
    if len(rules) > MAX_PHRASES:
        _too_many(len(rules))
    ps = PhraseSet(rules, whole_words=flags["whole_words"])
    # everything compiling could refuse is checked here, at admission: an error once the request is
    # in the engine's batch could only be raised inside the engine
    from ..patterns import check_compilable

    check_compilable(ps, DEFAULT_MAX_SYMBOLS)  # also expands finite regexes, refusing the others
    source = " + ".join([f"list {n}" for n in lists] + (["inline"] if phrases else []))
    return RequestRules(ps, flags["include_prompt"], source)


def _too_many(n: int):
    _fail(f"{n:,} phrases exceed this server's limit of {MAX_PHRASES:,} (set CULL_MAX_REQUEST_PHRASES to raise it)")


def _check_size(phrases: list) -> None:
    """Refuse an oversized list before a single rule is built: count, then characters (each is at
    least one symbol of the compile budget)."""
    if len(phrases) > MAX_PHRASES:
        _too_many(len(phrases))
    chars = sum(len(p) for p in phrases if isinstance(p, str))
    if chars > DEFAULT_MAX_SYMBOLS:
        _fail(f"the phrases hold {chars:,} characters, over the compile budget of {DEFAULT_MAX_SYMBOLS:,} "
              "symbols; send fewer or shorter phrases")


_LISTS: "OrderedDict[tuple, PhraseSet]" = OrderedDict()


def server_list(name, mode, bias) -> PhraseSet:
    """A server-side list, parsed once per (file, mtime, mode, bias)."""
    path = _list_path(name)
    key = (str(path), path.stat().st_mtime_ns, mode, bias)
    hit = _LISTS.get(key)
    if hit is None:
        hit = PhraseSet.load(path, action=mode, bias=bias, allow_symbols=True)
        _LISTS[key] = hit
        while len(_LISTS) > 16:
            _LISTS.popitem(last=False)
    else:
        _LISTS.move_to_end(key)
    return hit
