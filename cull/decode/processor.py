"""CullLogitsProcessor: a drop-in HF `LogitsProcessor` that hard-bans or biases phrases."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cull.compile.matcher import CompiledMatcher
from cull.errors import CullError
from cull.decode.row_states import RowStateCache


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
            The model's tokenizer (or a `cull.compile.vocab.TokenVocab`). Not needed for a `CompiledMatcher`.
        include_prompt (`bool`, *optional*, defaults to `False`):
            Also match text that starts in the prompt (e.g. a prompt that ends "I hope this letter").
        backend (`str`, *optional*, defaults to `"auto"`):
            `"torch"`, `"triton"` (CUDA) or `"reference"`; `"auto"` picks Triton for CUDA logits.
        vocab_size (`int`, *optional*):
            The model's logits width, if wider than the tokenizer.
        device_state (`bool` or `"auto"`, *optional*, defaults to `"auto"`):
            Keep row states on the GPU and advance them with a Triton kernel, so an ordinary decode
            step never waits for the host. `"auto"` does this for CUDA logits when triton is installed.
        inplace (`bool`, *optional*, defaults to `False`):
            Edit `scores` in place and return it. By default a new tensor is returned and the input
            is left untouched, as HF's processors do (`generate(output_logits=True)` relies on it);
            engines that own their logits buffer can save the copy with `inplace=True`.

    A row's state is a function of its own tokens, found by content (see `cull.decode.row_states`): rows may
    join or leave the batch, be reordered (beam search), jump ahead or roll back (assisted decoding,
    prompt lookup). A row that continues no row seen before starts a new generation: all of its
    tokens are prompt.

    Examples:

    A vocabulary of four tokens stands in for a tokenizer (any HF fast tokenizer works the same).
    The processor is called as `generate` calls it, once per step with the rows so far:

    >>> import torch, cull
    >>> from cull.compile.vocab import vocab_from_token_bytes
    >>> vocab = vocab_from_token_bytes([b" delve", b" d", b"elve", b" the"])
    >>> proc = cull.CullLogitsProcessor(["delve"], vocab, cache=False)
    >>> proc(torch.tensor([[3]]), torch.zeros(1, 4))     # prompt " the": " delve" would write the phrase
    tensor([[-inf, 0., 0., 0.]])
    >>> proc(torch.tensor([[3, 1]]), torch.zeros(1, 4))  # the model wrote " d": now "elve" would finish it
    tensor([[-inf, 0., -inf, 0.]])

    With a model:

    ```python
    proc = cull.CullLogitsProcessor(["delve", "a testament to"], tokenizer)
    out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=200)
    ```
    """

    def __init__(self, rules, tokenizer=None, *, include_prompt: bool = False, backend: str = "auto",
                 vocab_size: int | None = None, cache: bool = True, device_state="auto",
                 inplace: bool = False):
        if isinstance(rules, CompiledMatcher):
            self.matcher = rules
        else:
            if tokenizer is None:
                raise CullError("CullLogitsProcessor needs the model's tokenizer to compile phrases; "
                                "pass it as the second argument")
            from cull.compile.cache import compile_rules

            self.matcher = compile_rules(rules, tokenizer, vocab_size=vocab_size, cache=cache)
        from cull.kernels import resolve_backend  # validates the name now, not at the first step

        resolve_backend(backend, "cpu")
        if device_state not in (True, False, "auto"):
            raise CullError(f"device_state must be True, False or 'auto', got {device_state!r}")
        if not isinstance(inplace, bool):
            raise CullError(f"inplace must be True or False, got {inplace!r}")
        self.backend = backend
        self.include_prompt = include_prompt
        self.device_state = device_state
        self.inplace = inplace
        self._device_rows = None
        self._host_rows = RowStateCache(self.matcher, include_prompt)
        self.reset()

    def reset(self) -> None:
        """Forget all rows. Rows are found by content, so a new generation needs no reset, except
        one whose every prompt repeats (or extends by one token) a row this processor has seen:
        that looks like a rollback and continues the earlier generation's scope (which can only ban
        more). Call reset() (or use a new processor) before such a call; see `cull.decode.row_states`."""
        self._host_rows.clear()
        if self._device_rows is not None:
            self._device_rows.reset()

    def row_states(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """Each row's automaton state after its text so far, found by the row's own tokens."""
        return self._host_rows.states(input_ids.detach().to("cpu", torch.int64).numpy())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.dim() != 2 or input_ids.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise CullError(f"expected input_ids [B, L] and scores [B, V] with the same B, got "
                            f"{tuple(input_ids.shape)} and {tuple(scores.shape)}")
        if scores.shape[1] < self.matcher.n_tokens:
            raise CullError(f"the scores have {scores.shape[1]} columns but the rules were compiled for a "
                            f"vocabulary of {self.matcher.n_tokens} tokens; pass the logits of the model "
                            "that goes with this tokenizer (the full last dimension, not a slice)")
        from cull.kernels import apply_rules, resolve_backend

        if not self.inplace:
            scores = scores.clone()
        tables = self.matcher.device_tables(scores.device)
        if self._use_device_state(scores):
            if self._device_rows is None or self._device_rows.device != scores.device:
                from cull.decode.device_rows import DeviceRowStates

                self._device_rows = DeviceRowStates(self.matcher, scores.device, self.include_prompt)
            rows = self._device_rows
            if not rows.is_ordinary(input_ids):  # a jump, rollback or new batch: by content, on the host
                nodes, classes = rows.step_on_host(input_ids)
            elif resolve_backend(self.backend, scores.device) == "triton":  # one fused launch
                rows.step(input_ids, scores, tables)
                return scores
            else:
                nodes, classes = rows.step(input_ids, None, tables)
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
            return False  # a device state cannot hold a split character (cull/decode/device_rows.py)
        if self.device_state == "auto":
            from cull.kernels import triton_available

            return scores.is_cuda and triton_available()
        return bool(self.device_state)


def token_sequence_processor(sequences: "dict[Sequence[int], float] | Sequence[Sequence[int]]",
                             vocab_size: int, backend: str = "auto", *,
                             eos_token_id: "int | Sequence[int] | None" = None,
                             inplace: bool = False) -> CullLogitsProcessor:
    """HF-compatible token-form rules: a list of id sequences (banned, like `bad_words_ids`) or a
    {sequence: bias} dict (like `sequence_bias`). Matching includes the prompt, as HF's does.

    With `eos_token_id` (an id or a list of ids), a banned single-token sequence equal to an EOS id is
    dropped, as `NoBadWordsLogitsProcessor(bad_words_ids, eos_token_id=...)` does, so EOS is never
    banned on its own. Longer sequences that end in EOS are kept, as in HF.

    >>> import torch
    >>> proc = token_sequence_processor([[5, 6], [7]], vocab_size=8)   # ban 5 6, and 7 anywhere
    >>> proc(torch.tensor([[1, 5]]), torch.zeros(1, 8))               # after 5: 6 and 7 are banned
    tensor([[0., 0., 0., 0., 0., 0., -inf, -inf]])
    >>> bias = token_sequence_processor({(5, 6): -2.0}, vocab_size=8)
    >>> bias(torch.tensor([[5]]), torch.zeros(1, 8))
    tensor([[ 0.,  0.,  0.,  0.,  0.,  0., -2.,  0.]])
    """
    from cull.compile.token_sequences import compile_token_rules

    if isinstance(sequences, dict):
        seqs = {tuple(k): float(v) for k, v in sequences.items()}
    else:
        if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__iter__"):
            raise CullError(f"expected a list of token-id lists, got {type(sequences).__name__}")
        seqs = {tuple(s): float("-inf") for s in sequences}
        if eos_token_id is not None:
            eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
            if not all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
                raise CullError(f"eos_token_id must be an int or a list of ints, got {eos_token_id!r}")
            seqs = {s: d for s, d in seqs.items() if not (len(s) == 1 and s[0] in eos)}
    return CullLogitsProcessor(compile_token_rules(seqs, vocab_size, allow_empty=eos_token_id is not None),
                               include_prompt=True, backend=backend, inplace=inplace)
