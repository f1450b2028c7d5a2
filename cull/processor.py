"""CullLogitsProcessor: a drop-in HF `LogitsProcessor` that hard-bans or biases phrases."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .compiled import CompiledMatcher
from .errors import CullError


class CullLogitsProcessor:
    r"""
    [`LogitsProcessor`] that stops phrases from being written, whatever tokenization the model tries.

    Unlike `bad_words_ids` and `sequence_bias`, which match one exact token sequence, cull matches the
    *text*: case-insensitively, with whole-word boundaries, collapsed whitespace and typographic
    quotes, so " more"+"over", "Moreover" and "MORE"+"OVER" are all caught. In `ban` mode the text the
    generated tokens decode to never contains a match; a `bias` rule adds its delta instead.

    Args:
        rules (`cull.PhraseSet`, `list[str]` or `cull.CompiledMatcher`):
            The phrases. A plain list is hard-banned.
        tokenizer:
            The model's tokenizer (or a `cull.vocab.TokenVocab`). Not needed for a `CompiledMatcher`.
        include_prompt (`bool`, *optional*, defaults to `False`):
            Also match text that starts in the prompt (e.g. a prompt that ends "I hope this letter").
        backend (`str`, *optional*, defaults to `"auto"`):
            `"torch"`, `"triton"` (CUDA) or `"reference"`; `"auto"` picks Triton for CUDA logits.
        vocab_size (`int`, *optional*):
            The model's logits width, if wider than the tokenizer.
        device_state (`bool` or `"auto"`, *optional*, defaults to `"auto"`):
            Keep row states on the GPU and advance them with a Triton kernel, so the decode loop never
            waits for the host. `"auto"` does this for CUDA logits when triton is installed.

    Examples:

    ```python
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> import cull
    >>> tok = AutoTokenizer.from_pretrained("../shared/data/models/stories260K")
    >>> model = AutoModelForCausalLM.from_pretrained("../shared/data/models/stories260K")
    >>> inputs = tok("", return_tensors="pt")
    >>> proc = cull.CullLogitsProcessor(["Once upon a time"], tok)
    >>> out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=20, do_sample=False)
    >>> "once upon a time" in tok.decode(out[0]).lower()
    False
    ```
    """

    def __init__(self, rules, tokenizer=None, *, include_prompt: bool = False, backend: str = "auto",
                 vocab_size: int | None = None, cache: bool = True, device_state="auto"):
        if isinstance(rules, CompiledMatcher):
            self.matcher = rules
        else:
            if tokenizer is None:
                raise CullError("CullLogitsProcessor needs the model's tokenizer to compile phrases; "
                                "pass it as the second argument")
            from .compile_cache import compile_rules

            self.matcher = compile_rules(rules, tokenizer, vocab_size=vocab_size, cache=cache)
        from cull.kernels import resolve_backend  # validates the name now, not at the first step

        resolve_backend(backend, "cpu")
        if device_state not in (True, False, "auto"):
            raise CullError(f"device_state must be True, False or 'auto', got {device_state!r}")
        self.backend = backend
        self.include_prompt = include_prompt
        self.device_state = device_state
        self._device_rows = None
        self.reset()

    def reset(self) -> None:
        """Forget all rows. A new generation is detected by itself (its rows extend no row of the last
        step), except one whose prompt is exactly the previous call's output: that looks like the next
        decode step, so call reset() before such a call (or use a new processor)."""
        self._prompt_len = None
        self._last_len = None
        self._cache: dict[bytes, tuple[int, int]] = {}
        if getattr(self, "_device_rows", None) is not None:
            self._device_rows.reset()

    # ---- row states ----
    def _from_scratch(self, row: np.ndarray) -> tuple[int, int]:
        start = 0 if self.include_prompt else self._prompt_len
        return self.matcher.advance_many(self.matcher.initial_state(), row[start:])

    def row_states(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """Each row's automaton state after its text so far. Stateless in effect: a row is found by
        its content, so beam reordering and batch changes need no bookkeeping."""
        ids = input_ids.detach().to("cpu", torch.int64).numpy()
        B, L = ids.shape
        found = {}
        if self._last_len is not None and L == self._last_len + 1:
            for r in range(B):
                prev = self._cache.get(ids[r, :-1].tobytes())
                if prev is None:
                    break
                found[r] = self.matcher.advance(prev, int(ids[r, -1]))
        if len(found) < B:  # in a decode step every row extends a row of the last step: this is new
            self.reset()
            self._prompt_len = L
            found = {}
        states = []
        new_cache = {}
        for r in range(B):
            st = found.get(r)
            if st is None:
                st = self._from_scratch(ids[r])
            states.append(st)
            new_cache[ids[r].tobytes()] = st
        self._cache = new_cache
        self._last_len = L
        return states

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise CullError(f"expected input_ids [B, L] and scores [B, V] with the same B, got "
                            f"{tuple(input_ids.shape)} and {tuple(scores.shape)}")
        from cull.kernels import apply_rules, resolve_backend

        tables = self.matcher.device_tables(scores.device)
        if self._use_device_state(scores):
            if self._device_rows is None or self._device_rows.device != scores.device:
                from .device_state import DeviceRowStates

                self._device_rows = DeviceRowStates(self.matcher, scores.device, self.include_prompt)
            if resolve_backend(self.backend, scores.device) == "triton":  # one fused launch
                self._device_rows.step(input_ids, scores, tables)
                return scores
            nodes, classes = self._device_rows.step(input_ids, None, tables)
        else:
            states = self.row_states(input_ids)
            nodes = np.fromiter((s[0] for s in states), dtype=np.int64, count=len(states))
            classes = np.fromiter((s[1] for s in states), dtype=np.int64, count=len(states))
            if scores.device.type != "cpu":
                nodes = torch.from_numpy(nodes).to(scores.device)
                classes = torch.from_numpy(classes).to(scores.device)
        apply_rules(scores, nodes, classes, tables, self.backend)
        return scores

    def _use_device_state(self, scores) -> bool:
        if self.matcher.pending_possible:
            return False  # a device state cannot hold a split character (cull/device_state.py)
        if self.device_state == "auto":
            from cull.kernels import _triton_available

            return scores.is_cuda and _triton_available()
        return bool(self.device_state)


def token_sequence_processor(sequences: "dict[Sequence[int], float] | Sequence[Sequence[int]]",
                             vocab_size: int, backend: str = "auto") -> CullLogitsProcessor:
    """HF-compatible token-form rules: a list of id sequences (banned, like `bad_words_ids`) or a
    {sequence: bias} dict (like `sequence_bias`). Matching includes the prompt, as HF's does."""
    from .token_rules import compile_token_rules

    if isinstance(sequences, dict):
        seqs = {tuple(k): float(v) for k, v in sequences.items()}
    else:
        seqs = {tuple(s): float("-inf") for s in sequences}
    return CullLogitsProcessor(compile_token_rules(seqs, vocab_size), include_prompt=True, backend=backend)
