"""Per-request cull settings for serving engines: parsing, validation, and server-side lists.

A request asks for cull through `SamplingParams.extra_args` (`vllm_xargs` over the OpenAI API):

    extra_args = {"cull": {"phrases": ["delve", "a testament to"], "mode": "ban"}}
    extra_args = {"cull": {"list": "antislop", "mode": "bias", "bias": -5.0}}
    extra_args = {"cull": '{"phrases": ["delve"]}'}                 # the same, as a JSON string
    extra_args = {"cull_phrases": ["delve"], "cull_mode": "ban"}   # flat keys (vllm_xargs allows
                                                                   #  only strings, numbers, lists)

Keys: `phrases` (inline) and/or `list` (names of lists in the folder `$CULL_LISTS_DIR`, any format
`PhraseSet.load` reads), `mode` (`ban` or `bias`; default: the file's own actions, else ban),
`bias` (the delta for `mode=bias`, default -5), `include_prompt` (bool), `whole_words` (bool),
`ignore_accents` (bool) and `confusables` (bool: UTS #39 look-alikes; the server needs `cull-lm[confusables]`).
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

from cull.compile.build import DEFAULT_MAX_SYMBOLS
from cull.errors import CullError, MissingExtraError
from cull.rules import PhraseSet

try:  # imported now, not by the first request with a regex rule (~0.1 s on the server's event loop)
    import regex  # noqa: F401
except ImportError:  # pragma: no cover - the hf extra brings it; a regex rule then says what to install
    pass

KEYS = {"phrases", "list", "mode", "bias", "include_prompt", "whole_words", "ignore_accents", "confusables"}
FLAGS = ("include_prompt", "whole_words", "ignore_accents", "confusables")
DEFAULT_BIAS = -5.0
MAX_ABS_BIAS = 1e30  # float32 holds it; a larger delta would overflow to inf when compiled
def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise CullError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise CullError(f"{name} must be at least 1, got {raw!r}")
    return value


MAX_PHRASES = _env_limit("CULL_MAX_REQUEST_PHRASES", 100_000)
# the compile's time and memory grow with the phrases' characters (the trie's size): 2.5x the
# 50,046-phrase antislop list (389k characters) by default
MAX_CHARS = _env_limit("CULL_MAX_REQUEST_CHARS", 1_000_000)
MAX_REGEX_RULES = 100  # each is compiled and expanded on the API server's event loop
MAX_REGEX_CHARS = 1_000
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
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith(".") \
            or len(name) > 200 or "\0" in name:
        _fail(f"'list' must be a plain list name from the server's {LISTS_ENV} folder, got {_short(repr(name))}")
    folder = os.environ.get(LISTS_ENV)
    if not folder:
        _fail(f"'list' needs the server to set {LISTS_ENV} to a folder of phrase lists; it is not set")
    folder = Path(folder)
    for cand in [folder / name] + [folder / f"{name}{ext}" for ext in (".txt", ".json", ".yaml", ".yml")]:
        try:
            if cand.is_file():
                return cand
        except OSError:
            continue
    names = sorted(p.stem for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    _fail(f"no list {_short(name)} in {folder}; available: {', '.join(names[:20]) or '(none)'}"
          + (f" and {len(names) - 20} more" if len(names) > 20 else ""))


_PARSED: "OrderedDict[str, RequestRules]" = OrderedDict()
_PARSED_MAX = 256
_PARSED_MAX_RULES = 200_000  # a few 50k lists: the LRU is bounded by what it holds, not by entries
_parsed_rules = [0]


def parse_settings(extra_args, *, in_engine: bool = False) -> RequestRules | None:
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
    req = _parse(s, in_engine)
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
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(f"'{key}' must be a finite number (a logit delta such as -5), got {_short(repr(v))}")
    try:
        v = float(v)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v) or abs(v) > MAX_ABS_BIAS:
        _fail(f"'{key}' must be a finite number between -{MAX_ABS_BIAS:g} and {MAX_ABS_BIAS:g} (a logit delta "
              f"such as -5), got {_short(repr(v))}")
    return v


def _parse(s: dict, in_engine: bool = False) -> RequestRules:
    unknown = set(s) - KEYS
    if unknown:
        names = sorted(map(str, unknown))
        shown = ", ".join(_short(k, 40) for k in names[:5]) + (f" and {len(names) - 5:,} more" if len(names) > 5 else "")
        _fail(f"unknown key(s) {shown}; the keys are {sorted(KEYS)}")
    mode = s.get("mode")
    if mode not in (None, "ban", "bias"):
        _fail(f"'mode' must be 'ban' or 'bias', got {mode!r}")
    bias = s.get("bias", DEFAULT_BIAS if mode == "bias" else None)
    if bias is not None:
        bias = _number("bias", bias)
        if mode != "bias":
            _fail("'bias' is given but 'mode' is not 'bias'; add \"mode\": \"bias\"")
    flags = {key: _flag(key, s.get(key, key == "whole_words")) for key in FLAGS}
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
        rules.extend(server_list(name, mode, bias, stale_ok=in_engine).rules)
        if len(rules) > MAX_PHRASES:
            _too_many(len(rules))
    if phrases:
        rules.extend(PhraseSet(phrases, action=mode or "ban", bias=bias, allow_symbols=True).rules)
    if not rules:
        _fail("no phrases: give 'phrases' (a list of strings) or 'list' (a server-side list name)")
    if len(rules) > MAX_PHRASES:
        _too_many(len(rules))
    try:
        ps = PhraseSet(rules, whole_words=flags["whole_words"], ignore_accents=flags["ignore_accents"],
                       confusables=flags["confusables"])
    except MissingExtraError:
        _fail("'confusables' needs the confusables package on the server (pip install 'cull-lm[confusables]'); "
              "leave the key out, or ask the operator to install it")
    # everything compiling could refuse is checked here, at admission: an error once the request is
    # in the engine's batch could only be raised inside the engine
    from cull.compile.patterns import check_compilable

    check_compilable(ps, DEFAULT_MAX_SYMBOLS)  # also expands finite regexes, refusing the others
    source = " + ".join([f"list {n}" for n in lists] + (["inline"] if phrases else []))
    return RequestRules(ps, flags["include_prompt"], source)


def _too_many(n: int):
    _fail(f"{n:,} phrases exceed this server's limit of {MAX_PHRASES:,} (set CULL_MAX_REQUEST_PHRASES to raise it)")


def _check_size(phrases: list) -> None:
    """Refuse an oversized list before a single rule is built: count, characters (what compiling
    costs grows with them), and regex rules (each is compiled here, on the server's event loop)."""
    if len(phrases) > MAX_PHRASES:
        _too_many(len(phrases))
    strs = [p for p in phrases if isinstance(p, str)]
    chars = sum(map(len, strs))
    if chars > min(MAX_CHARS, DEFAULT_MAX_SYMBOLS):
        _fail(f"the phrases hold {chars:,} characters, over this server's limit of {MAX_CHARS:,} "
              "(set CULL_MAX_REQUEST_CHARS to raise it); send fewer or shorter phrases, or use a server-side list")
    regexes = [p for p in strs if p.startswith("re:")]
    if len(regexes) > MAX_REGEX_RULES:
        _fail(f"{len(regexes):,} regex rules; a request may hold at most {MAX_REGEX_RULES}")
    long = next((r for r in regexes if len(r) - 3 > MAX_REGEX_CHARS), None)
    if long is not None:
        _fail(f"a regex rule of {len(long) - 3:,} characters ({_short(long)}); the limit is {MAX_REGEX_CHARS:,}")


def _short(text: str, n: int = 60) -> str:
    """A value quoted in an error message, cut short: errors never echo megabytes back."""
    return repr(text[:n] + "…") if len(text) > n else repr(text)


_LISTS: "OrderedDict[tuple, PhraseSet]" = OrderedDict()


_LAST_GOOD: dict[tuple, PhraseSet] = {}


def server_list(name, mode, bias, *, stale_ok: bool = False) -> PhraseSet:
    """A server-side list, parsed once per (file, mtime, mode, bias). `stale_ok` (inside the engine,
    for a request the API server already admitted): if the file is gone or unreadable right now (an
    operator replacing it), the last version read is used rather than failing the request."""
    try:
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
    except (CullError, OSError):
        stale = _LAST_GOOD.get((name, mode, bias))
        if stale_ok and stale is not None:
            return stale
        raise
    if len(_LAST_GOOD) < 64 or (name, mode, bias) in _LAST_GOOD:
        _LAST_GOOD[(name, mode, bias)] = hit
    return hit
