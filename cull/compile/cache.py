"""`compile_rules`: rules + tokenizer -> CompiledMatcher, through an on-disk cache (.npz, no pickle).

The cache is bounded: `$CULL_CACHE_MIB` (default 1024) MiB of compiled tables, least recently used
dropped first (a hit refreshes the file's mtime). Several processes may share the folder: files are
written under a temporary name and renamed into place, and every reader or pruner treats a file
that vanished or is unreadable as a miss. A file whose stored fingerprint (vocabulary, rules) does
not match its key is recompiled and rewritten, never trusted.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cull.resources import cache_dir
from cull.compile.matcher import CompiledMatcher, cache_key
from cull.compile.build import DEFAULT_MAX_SYMBOLS, build_tables
from cull.compile.vocab_index import TokenKeys
from cull.errors import CullError
from cull.rules import PhraseSet, as_phrase_set
from cull.compile.vocab import TokenVocab, vocab_from_tokenizer


def as_vocab(tokenizer_or_vocab, vocab_size: int | None = None) -> TokenVocab:
    if isinstance(tokenizer_or_vocab, TokenVocab):
        return tokenizer_or_vocab
    return vocab_from_tokenizer(tokenizer_or_vocab, vocab_size=vocab_size)


def _progress_printer(enabled: bool):
    if not enabled:
        return None
    try:
        from rich.console import Console

        console = Console(stderr=True, log_path=False)
        return lambda msg: console.log(f"cull compile: {msg}", markup=False)
    except ImportError:
        return lambda msg: print(f"cull compile: {msg}", file=sys.stderr)


_KEYS: dict[tuple[str, int], TokenKeys] = {}


def _token_keys(vocab: TokenVocab, rules: PhraseSet) -> TokenKeys:
    """The vocabulary's sorted token keys, kept for the last two vocabularies: they cost most of a
    small list's compile time and depend only on the vocabulary."""
    key = (vocab.fingerprint(), rules.options.fold())
    if key not in _KEYS:
        while len(_KEYS) >= 2:
            _KEYS.pop(next(iter(_KEYS)))
        _KEYS[key] = TokenKeys(vocab.token_bytes, rules.options.fold())
    return _KEYS[key]


def compile_rules(
    rules: "PhraseSet | list[str]",
    tokenizer,
    *,
    vocab_size: int | None = None,
    cache: bool = True,
    max_symbols: int = DEFAULT_MAX_SYMBOLS,
    progress: bool = False,
) -> CompiledMatcher:
    """Compile phrase rules against a tokenizer (or a cull TokenVocab).

    The result is cached under $CULL_CACHE_DIR (default ~/.cache/cull), keyed by the hash of the
    vocabulary and of the normalised rules; `cache=False` compiles afresh and writes nothing.

    >>> import cull
    >>> from cull.compile.vocab import vocab_from_token_bytes
    >>> vocab = vocab_from_token_bytes([b" delve", b" d", b"elve", b" the"])
    >>> matcher = cull.compile_rules(["delve", "a testament to"], vocab, cache=False)
    >>> matcher.stats()["patterns"], matcher.n_tokens
    (2, 4)
    >>> matcher.banned(matcher.initial_state())   # {token: delta}: " delve" writes the whole phrase
    {0: -inf}
    """
    rules = as_phrase_set(rules)
    if not rules.rules:
        raise CullError("no rules to compile: the phrase list is empty")
    lower_bound = sum(len(r.phrase) for r in rules.rules)  # every character is at least one symbol
    if lower_bound > max_symbols:
        from cull.errors import RuleError

        raise RuleError(
            f"{len(rules):,} rules with {lower_bound:,} characters exceed the compile budget of "
            f"{max_symbols:,} symbols; compiling them would take too much memory. Split the list, drop "
            "rarely-useful phrases, or raise max_symbols")
    vocab = as_vocab(tokenizer, vocab_size)
    path = None
    if cache:
        key = cache_key("text", vocab.fingerprint(), rules.fingerprint(), str(max_symbols))
        path = cache_dir() / f"{key}.npz"
    fingerprint = f"{vocab.fingerprint()}:{rules.fingerprint()}:{max_symbols}"
    if cache and path.exists():
        matcher = _load_checked(path, vocab, fingerprint)
        if matcher is not None:
            return matcher
    t0 = time.perf_counter()
    tables = build_tables(rules, vocab.token_bytes, vocab.special_ids, keys=_token_keys(vocab, rules),
                          max_symbols=max_symbols, progress=_progress_printer(progress))
    meta = {"n_patterns": int(tables["n_patterns"]), "depth": int(tables["depth"]),
            "n_tokens": len(vocab.token_bytes), "compile_s": time.perf_counter() - t0,
            "perm_off": [int(x) for x in tables["perm_off"]],
            "timings": tables["timings"], "from_cache": False, "fingerprint": fingerprint}
    matcher = CompiledMatcher(tables, vocab.token_bytes, mode="text", fold=rules.options.fold(),
                              meta=meta)
    if cache:
        try:
            matcher.save(path)
            prune_cache(path.parent, keep=path)
        except OSError as exc:  # a read-only home is not an error; we recompile next time, and say so once
            _warn_unwritable(path.parent, exc)
    return matcher


_WARNED: set[str] = set()


def _warn_unwritable(folder: Path, exc: OSError) -> None:
    if str(folder) not in _WARNED:
        _WARNED.add(str(folder))
        print(f"cull: warning: cannot write the compile cache in {folder} ({exc.strerror or exc}); every run "
              "recompiles. Set CULL_CACHE_DIR to a writable folder, or pass cache=False", file=sys.stderr)


def _load_checked(path: Path, vocab: TokenVocab, fingerprint: str):
    """The cached matcher, or None (the file is then recompiled and atomically replaced): a
    truncated or corrupt file, another list's tables under this key, or a file another process
    just pruned are all misses, never errors."""
    try:
        matcher = CompiledMatcher.load(path, vocab.token_bytes)
    except CullError:
        return None
    if matcher.meta.get("fingerprint") != fingerprint:
        return None
    matcher.meta["from_cache"] = True
    try:
        os.utime(path)  # least recently *used*: a hit counts
    except OSError:
        pass
    return matcher


DEFAULT_CACHE_MIB = 1024.0
STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died


def cache_limit_bytes() -> float:
    raw = os.environ.get("CULL_CACHE_MIB", "")
    try:
        mib = float(raw) if raw else DEFAULT_CACHE_MIB
    except ValueError:
        mib = float("nan")
    if not mib >= 0 or mib == float("inf"):  # nan fails the comparison
        raise CullError(f"CULL_CACHE_MIB must be a number of MiB >= 0 (the compile cache's size bound), got {raw!r}")
    return mib * 2**20


def prune_cache(folder: Path, limit_bytes: float | None = None, keep: Path | None = None) -> int:
    """Delete the least recently used compiled tables until the folder holds at most `limit_bytes`;
    returns how many files were removed. Safe against concurrent writers and pruners. `keep`, the
    file just written, is evicted alone if it is larger than the whole bound (rather than emptying
    the cache for it)."""
    limit = cache_limit_bytes() if limit_bytes is None else limit_bytes
    if keep is not None:
        try:
            if keep.stat().st_size > limit:
                return _unlink(keep)
        except OSError:
            pass
    entries = []
    now = time.time()
    removed = 0
    try:
        scan = list(os.scandir(folder))
    except OSError:
        return 0
    for e in scan:
        if not e.name.endswith(".npz"):
            continue
        try:
            st = e.stat()
        except OSError:
            continue  # removed by another process meanwhile
        if ".tmp." in e.name:
            if now - st.st_mtime > STALE_TMP_S:
                removed += _unlink(e.path)
            continue
        entries.append((st.st_mtime, st.st_size, e.path))
    total = sum(size for _, size, _ in entries)
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        removed += _unlink(p)
        total -= size
    return removed


def _unlink(path) -> int:
    try:
        os.unlink(path)
        return 1
    except OSError:
        return 0
