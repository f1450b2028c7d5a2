"""cull's own generator: it backtracks, so that no half-written phrase is ever left in the text.

A logits processor can only stop the token that would complete a phrase, so the text may keep a stub
("a testament of the ..."). This generator lets the model write, and when a match completes it
rewinds to the token that wrote the match's first character, forbids that token at that position
(for a `bias` rule: applies the delta there, once), and samples again. It enforces every rule the
reference matcher knows, general regexes included.

Streaming holds text back until it is resolved: text is emitted up to the last point where no
phrase can still be under way (the automaton is at its root there), and, when there are regex
rules, never within the last `REGEX_HOLD` characters.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

from cull.decode.tokens import eos_ids
from cull.errors import CullError, require
from cull.rules.find import find
from cull.rules import PhraseSet, as_phrase_set

REGEX_HOLD = 256


@dataclass
class BacktrackResult:
    text: str  # the new text (raw token bytes, decoded)
    token_ids: list[int]
    backtracks: int
    events: list[dict] = field(default_factory=list)  # one per rewind: rule, position, forbidden token


class _Text:
    """The generated tokens' bytes and where each token's text ends, in characters."""

    def __init__(self, token_bytes):
        self.tb = token_bytes
        self.buf = b""
        self.text = ""
        self.ends: list[int] = []
        self.byte_ends: list[int] = []

    def push(self, t: int) -> None:
        self.buf += self.tb[t] if 0 <= t < len(self.tb) else b""
        self.text = self.buf.decode("utf-8", "ignore")
        self.byte_ends.append(len(self.buf))
        self.ends.append(len(self.text))

    def cut(self, k: int) -> None:
        self.buf = self.buf[:self.byte_ends[k - 1]] if k else b""
        self.text = self.buf.decode("utf-8", "ignore")
        del self.ends[k:], self.byte_ends[k:]

    def token_at(self, char: int) -> int:
        """Index of the token that wrote character `char`."""
        for i, end in enumerate(self.ends):
            if end > char:
                return i
        return len(self.ends) - 1


def generate_backtracking(model, tokenizer, prompt_ids, rules, *, max_new_tokens: int = 200,
                          do_sample: bool = True, temperature: float = 0.8, top_p: float | None = None,
                          seed: int = 0, max_backtracks: int = 500, stream: Callable[[str], None] | None = None,
                          vocab_size: int | None = None) -> BacktrackResult:
    """Generate after `prompt_ids` (a list of ids) with `rules` enforced by rewinding.

    `tokenizer` is the model's HF tokenizer or a `cull.compile.vocab.TokenVocab`. Here a tiny random
    Llama with its output layer zeroed likes every token equally, so greedy decoding takes the lowest
    id, " delve", every time; each time the phrase completes, the generator rewinds to the token that
    started it, forbids that token there and goes on:

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from cull.compile.vocab import vocab_from_token_bytes
    >>> vocab = vocab_from_token_bytes([b" delve", b" dig", b" in"])
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=3, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
    ...     num_attention_heads=1, num_key_value_heads=1, bos_token_id=None, eos_token_id=None, pad_token_id=None))
    >>> _ = model.lm_head.weight.data.zero_()
    >>> result = generate_backtracking(model, vocab, [2], ["delve"], max_new_tokens=3, do_sample=False)
    >>> result.text, result.backtracks
    (' dig dig dig', 3)
    """
    torch = require("torch", "hf")
    require("transformers", "hf")
    from transformers import DynamicCache

    from cull.compile.cache import as_vocab, compile_rules

    rules = as_phrase_set(rules)
    if max_new_tokens < 1 or max_backtracks < 0:
        raise CullError("max_new_tokens must be at least 1 and max_backtracks at least 0")
    if do_sample and not 0 < temperature < float("inf"):
        raise CullError(f"temperature must be above 0 and finite when sampling, got {temperature}")
    vocab = as_vocab(tokenizer, vocab_size or model.get_output_embeddings().weight.shape[0])
    phrases = rules.with_rules(rules.phrase_rules)
    matcher = compile_rules(phrases, vocab) if phrases.rules else None  # for the hold-back point
    eos = set(eos_ids(tokenizer, model))
    gen = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    prompt = list(prompt_ids)
    out: list[int] = []
    text = _Text(vocab.token_bytes)
    states = []  # automaton node after each token (hold-back)
    forbid: dict[int, dict[int, float]] = {}
    accepted: set[tuple[int, str]] = set()
    events, sent = [], 0
    cache = DynamicCache()
    # newer transformers call the KV cache `cache` and warn about the old `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(ids):
        with torch.inference_mode():
            o = model(input_ids=torch.tensor([ids], device=dev), use_cache=True, **{cache_arg: cache})
        return o.logits[0, -1].float().cpu()

    logits = forward(prompt)
    finished = False
    while not finished:
        pos = len(out)
        row = logits.clone()
        for t, d in forbid.get(pos, {}).items():
            row[t] = -math.inf if d == -math.inf else row[t] + d
        t = _pick(row, do_sample, temperature, top_p, gen)
        out.append(t)
        text.push(t)
        if matcher is not None:
            prev = states[-1] if states else matcher.initial_state()
            states.append(matcher.advance(prev, t))
        finished = t in eos or len(out) >= max_new_tokens
        hit = _first_new_match(text, rules, accepted, finished)
        if hit is not None:
            k = text.token_at(hit.start)
            slot = forbid.setdefault(k, {})
            if hit.rule.action == "bias" and out[k] in slot:  # the delta was applied once: keep it
                accepted.add((hit.start, hit.rule.text))
            else:
                if len(events) >= max_backtracks:
                    raise CullError(f"gave up after {max_backtracks} backtracks at token {k}; the rules leave "
                                    "the model few ways to go on (raise max_backtracks, or loosen the rules)")
                slot[out[k]] = hit.rule.delta
                for p in [p for p in forbid if p > k]:
                    del forbid[p]  # they were for a context that is gone
                cut_char = text.ends[k - 1] if k else 0
                accepted = {a for a in accepted if a[0] < cut_char}
                events.append({"rule": hit.rule.text, "token_index": k, "token": out[k],
                               "text": text.text[hit.start:hit.end]})
                del out[k:], states[k:]
                text.cut(k)
                _crop(cache, len(prompt) + k - 1)
                logits = forward([(prompt + out)[-1]])
                finished = False
                continue
        if stream is not None:
            safe = len(text.text) if finished else _safe_point(text, states, rules)
            if safe > sent:
                stream(text.text[sent:safe])
                sent = safe
        if not finished:
            logits = forward([t])
    return BacktrackResult(text.text, out, len(events), events)


def _crop(cache, keep: int) -> None:
    """Keep the first `keep` positions of the KV cache (a negative crop removes that many)."""
    n = cache.get_seq_length()
    if n > keep:
        cache.crop(keep - n)
    if cache.get_seq_length() != keep:
        raise CullError(f"could not rewind the KV cache to {keep} positions (it has {cache.get_seq_length()}); "
                        "this transformers version's cache does not support cropping")


def _pick(row, do_sample, temperature, top_p, gen) -> int:
    import torch

    if not do_sample:
        return int(row.argmax())
    probs = torch.softmax(row / temperature, -1)
    if top_p is not None and top_p < 1:
        sp, si = probs.sort(descending=True)
        keep = sp.cumsum(0) - sp < top_p
        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def _first_new_match(text: _Text, rules: PhraseSet, accepted, finished: bool):
    """The earliest match that is settled (text goes on after it, or the generation ended)."""
    s = text.text
    best = None
    for m in find(s, rules):
        if (m.start, m.rule.text) in accepted or (m.end >= len(s) and not finished):
            continue
        if best is None or m.start < best.start:
            best = m
    return best


def _safe_point(text: _Text, states, rules: PhraseSet) -> int:
    """Characters that can be emitted: up to the last token after which no phrase is under way."""
    n = len(text.text)
    if rules.regex_rules:
        n = max(0, n - REGEX_HOLD)
    safe = 0
    for i in range(len(states) - 1, -1, -1):
        if states[i][0] == 0 and states[i][1] < 3:  # at the root, and not inside a split character
            safe = text.ends[i]
            break
    if not rules.phrase_rules:
        safe = len(text.text)
    return min(safe, n)
