"""`compile_rules`: rules + tokenizer -> CompiledMatcher, through an on-disk cache (.npz, no pickle)."""
from __future__ import annotations

import sys
import time

from .compiled import CompiledMatcher, cache_dir, cache_key
from .compiler import DEFAULT_MAX_SYMBOLS, build_tables
from .token_keys import TokenKeys
from .errors import CullError
from .rules import PhraseSet, as_phrase_set
from .vocab import TokenVocab, vocab_from_tokenizer


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
        return lambda msg: console.log(f"[cull compile] {msg}")
    except ImportError:
        return lambda msg: print(f"[cull compile] {msg}", file=sys.stderr)


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
    vocabulary and of the normalised rules.
    """
    rules = as_phrase_set(rules)
    if not rules.rules:
        raise CullError("no rules to compile: the phrase list is empty")
    lower_bound = sum(len(r.phrase) for r in rules.rules)  # every character is at least one symbol
    if lower_bound > max_symbols:
        from .errors import RuleError

        raise RuleError(
            f"{len(rules):,} rules with {lower_bound:,} characters exceed the compile budget of "
            f"{max_symbols:,} symbols; compiling them would take too much memory. Split the list, drop "
            "rarely-useful phrases, or raise max_symbols")
    vocab = as_vocab(tokenizer, vocab_size)
    path = None
    if cache:
        key = cache_key("text", vocab.fingerprint(), rules.fingerprint(), str(max_symbols))
        path = cache_dir() / f"{key}.npz"
    if cache and path.exists():
        try:
            matcher = CompiledMatcher.load(path, vocab.token_bytes)
            matcher.meta["from_cache"] = True
            return matcher
        except CullError:
            path.unlink(missing_ok=True)  # a corrupt or stale cache file is rebuilt, not trusted
    t0 = time.perf_counter()
    tables = build_tables(rules, vocab.token_bytes, vocab.special_ids, keys=_token_keys(vocab, rules),
                          max_symbols=max_symbols, progress=_progress_printer(progress))
    meta = {"n_patterns": int(tables["n_patterns"]), "depth": int(tables["depth"]),
            "n_tokens": len(vocab.token_bytes), "compile_s": time.perf_counter() - t0,
            "perm_off": [int(x) for x in tables["perm_off"]],
            "timings": tables["timings"], "from_cache": False}
    matcher = CompiledMatcher(tables, vocab.token_bytes, mode="text", fold=rules.options.fold(),
                              meta=meta)
    if cache:
        try:
            matcher.save(path)
        except OSError:
            pass  # a read-only home is not an error; we just recompile next time
    return matcher
