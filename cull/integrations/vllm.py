"""cull as a vLLM logits-processor plugin, with one phrase list per request.

Two classes, one per vLLM logits-processor interface:

* `CullLogitsProcessor` — the V1 model runner's interface (`vllm.v1.sample.logits_processor`).
* `CullLogitsProcessorV2` — Model Runner V2's (`vllm.v1.worker.gpu.sample.logits_processor`), the
  default runner on GPU from vLLM 0.32. Its loader rejects V1-interface classes, so pass the class
  that matches the runner (`VLLM_USE_V2_MODEL_RUNNER`).

Enable it:

    LLM(model, logits_processors=[CullLogitsProcessor])                       # offline, V1 runner
    vllm serve MODEL --logits-processors cull.integrations.vllm:CullLogitsProcessor
    VLLM_USE_V2_MODEL_RUNNER=1 vllm serve MODEL \\
        --logits-processors cull.integrations.vllm:CullLogitsProcessorV2

cull registers no `vllm.logits_processors` entry point: vLLM would load it into every engine, and
the V2 loader refuses V1 classes, so an installed cull could stop vLLM from starting.

Requests opt in through `SamplingParams.extra_args` (`vllm_xargs` over HTTP); see
`cull.integrations.request_settings`. Requests without cull settings cost nothing: the processor
returns at once when no row of the batch asked for it. Rows with different lists share a batch: each
list is compiled once (an LRU with a memory bound, `CULL_MATCHER_CACHE_MIB`) and applied to its rows.
"""
from __future__ import annotations

import os
import weakref

import torch

from cull.errors import CullError, require
from cull.integrations.matcher_cache import MatcherCache
from cull.integrations.request_settings import parse_settings
from cull.integrations.serving_metrics import METRICS, log
from cull.integrations.server_lists import precompile_server_lists, warm_server_lists

require("vllm", "vllm")
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402
from vllm.v1.sample.logits_processor import LogitsProcessor as _V1Base  # noqa: E402

try:  # Model Runner V2 (vLLM >= 0.32)
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2Base
except ImportError:  # pragma: no cover - older vLLM
    _V2Base = None

__all__ = ["CullLogitsProcessor", "CullLogitsProcessorV2", "live_processors"]

_LIVE: "weakref.WeakSet" = weakref.WeakSet()


def live_processors() -> list:
    """The cull processors alive in this process (an in-process engine's, for tests and metrics)."""
    return list(_LIVE)


class _Row:
    """One request's matcher and automaton state, advanced over its tokens as they come. A row
    whose matcher could not be built (`matcher` None) is served closed: see `_Engine.apply`."""

    __slots__ = ("matcher", "include_prompt", "state", "start_state", "done", "tokens")

    def __init__(self, matcher, include_prompt: bool):
        self.matcher = matcher
        self.include_prompt = include_prompt
        self.state = self.start_state = matcher.initial_state() if matcher is not None else None
        self.done = 0
        self.tokens = None

    def advance(self, tokens) -> None:
        if self.matcher is not None:
            self.state = self.matcher.advance_many(self.state, tokens)

    def catch_up(self) -> None:
        """Advance over the output tokens vLLM appended since the last step. An async-scheduling
        placeholder (-1) stops the walk until it is replaced; a list that shrank (tokens discarded)
        is walked again from the start."""
        tokens = self.tokens
        n = len(tokens)
        if n < self.done:
            self.state, self.done = self.start_state, 0
        if n > self.done:
            new = tokens[self.done:n]
            if -1 in new:
                new = new[:new.index(-1)]
            self.advance(new)
            self.done += len(new)


class _Engine:
    """What both interfaces share: the tokenizer, the matcher cache and the batched apply.

    Nothing here raises inside the engine: settings were validated at admission, and should
    building or applying a matcher still fail, the error is logged and the affected rows are served
    closed (every token but the special ones banned, so the request ends with EOS) for ban lists,
    or left untouched for bias lists; the other rows of the batch are served normally."""

    def __init__(self, vllm_config, device):
        from transformers import AutoTokenizer

        from cull.compile.vocab import vocab_from_tokenizer

        mc = vllm_config.model_config
        try:
            tok = AutoTokenizer.from_pretrained(mc.tokenizer, revision=getattr(mc, "tokenizer_revision", None),
                                                trust_remote_code=getattr(mc, "trust_remote_code", False))
        except Exception as exc:
            raise CullError(f"cull could not load the model's tokenizer {mc.tokenizer!r} with transformers "
                            f"({exc}); cull needs a Hugging Face tokenizer to map tokens to text") from exc
        self.vocab = vocab_from_tokenizer(tok, vocab_size=mc.get_vocab_size())
        self.cache = MatcherCache(self.vocab, device)
        self._closed_masks: dict = {}
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            log.info("cull: its counters reach vLLM's /metrics from an engine process only when "
                     "PROMETHEUS_MULTIPROC_DIR is set (vLLM sets it only for several API servers); "
                     "set it to an empty folder to see them")
        precompile_server_lists(self.cache)

    def new_row(self, params) -> _Row | None:
        try:
            req = parse_settings(getattr(params, "extra_args", None), in_engine=True)
        except Exception as exc:  # admission refused it already; an engine must never raise here
            log.error("cull: settings refused inside the engine (%s); the request is served closed", exc)
            return _Row(None, False)
        if req is None:
            return None
        try:
            return _Row(self.cache.get(req.rules, source=req.source), req.include_prompt)
        except Exception:
            log.exception("cull: could not compile a request's phrase list; the request is served closed")
            return _Row(None, False)

    def apply(self, logits: torch.Tensor, rows: dict[int, _Row]) -> None:
        """Edit logits[i] for every (i, row): one kernel call per distinct matcher."""
        groups: dict[int, list[int]] = {}
        closed = []
        for i, row in rows.items():
            if row.matcher is None:
                closed.append(i)
            else:
                groups.setdefault(id(row.matcher), []).append(i)
        for idx in groups.values():
            try:
                self._apply_group(logits, rows, idx)
            except Exception:
                log.exception("cull: applying a phrase list failed; its rows are served closed")
                if rows[idx[0]].matcher.all_ban:
                    closed.extend(idx)
        if closed:
            METRICS.failed(len(closed))
            self._close(logits, closed)

    @staticmethod
    def _apply_group(logits, rows, idx) -> None:
        from cull.kernels import apply_rules

        B = logits.shape[0]
        for i in idx:
            if rows[i].tokens is not None:  # V1 rows read vLLM's output list; V2 rows are advanced by the caller
                rows[i].catch_up()
        matcher = rows[idx[0]].matcher
        nodes = torch.tensor([rows[i].state[0] for i in idx], dtype=torch.int64, device=logits.device)
        classes = torch.tensor([rows[i].state[1] for i in idx], dtype=torch.int64, device=logits.device)
        tables = matcher.device_tables(logits.device)
        if idx == list(range(B)):
            apply_rules(logits, nodes, classes, tables)
            return
        where = torch.tensor(idx, dtype=torch.int64, device=logits.device)
        sub = logits.index_select(0, where)
        apply_rules(sub, nodes, classes, tables)
        logits.index_copy_(0, where, sub)

    def _close(self, logits, idx) -> None:
        """Ban every token that writes text in these rows: the request can only end (EOS)."""
        key = (logits.shape[1], str(logits.device))
        mask = self._closed_masks.get(key)
        if mask is None:
            mask = torch.ones(logits.shape[1], dtype=torch.bool)
            special = [t for t in self.vocab.special_ids if t < logits.shape[1]]
            mask[special] = False
            mask[len(self.vocab.token_bytes):] = False  # padding ids beyond the tokenizer: never sampled anyway
            mask = self._closed_masks[key] = mask.to(logits.device)
        for i in idx:
            logits[i].masked_fill_(mask, float("-inf"))


def _validate(sampling_params) -> None:
    """Admission. vLLM answers HTTP 400 only for a ValueError (a CullError is one); anything else
    would be a 500 with an empty message, so every failure leaves here as a CullError."""
    try:
        parse_settings(getattr(sampling_params, "extra_args", None))
    except CullError:
        raise
    except Exception as exc:
        log.warning("cull: request settings refused after %s: %s", type(exc).__name__, str(exc)[:200])
        raise CullError(f"cull request settings could not be read ({type(exc).__name__}: {str(exc)[:120]}); "
                        "check the phrases, list names and values") from None


class CullLogitsProcessor(_V1Base):
    """vLLM (V1 model runner) logits processor: bans or biases each request's phrases, whatever
    tokenization the model tries.

    Example:

    ```python
    from vllm import LLM, SamplingParams
    from cull.integrations.vllm import CullLogitsProcessor

    llm = LLM("Qwen/Qwen2-1.5B-Instruct", logits_processors=[CullLogitsProcessor])
    params = SamplingParams(max_tokens=200, extra_args={"cull": {"phrases": ["delve", "a testament to"]}})
    print(llm.generate(["Write about the sea."], params)[0].outputs[0].text)
    ```

    Admission, which vLLM runs on every request before it reaches the engine, needs no model; a
    request with bad settings is refused with a message that says what to fix (HTTP 400 on a server):

    >>> from vllm import SamplingParams
    >>> CullLogitsProcessor.validate_params(SamplingParams(extra_args={"cull": {"phrases": ["delve"]}}))
    >>> bad = SamplingParams(extra_args={"cull": {"phrases": ["delve"], "mode": "erase"}})
    >>> CullLogitsProcessor.validate_params(bad)
    Traceback (most recent call last):
    cull.errors.CullError: cull request settings: 'mode' must be 'ban' or 'bias', got 'erase'
    """

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        _validate(sampling_params)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.engine = _Engine(vllm_config, device)
        self.rows: dict[int, _Row] = {}
        _LIVE.add(self)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        rows = self.rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            row = self.engine.new_row(params)
            rows.pop(index, None)  # an added request replaces whatever held the index
            if row is not None:
                if row.include_prompt and prompt_ids:
                    row.advance(prompt_ids)
                    row.start_state = row.state
                row.tokens = output_ids  # vLLM appends to this list in place
                rows[index] = row
        for a, b, direction in batch_update.moved:
            ra, rb = rows.pop(a, None), rows.pop(b, None)
            if ra is not None:
                rows[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.rows:
            self.engine.apply(logits, self.rows)
        return logits


if _V2Base is not None:

    class CullLogitsProcessorV2(_V2Base):
        """vLLM Model Runner V2 logits processor: the same per-request phrase lists as
        `CullLogitsProcessor`, reading each request's tokens from the runner's `all_token_ids`.

        Rows are matched to request slots through the step's `LogitsContext`. Under speculative
        decoding each draft row gets its request's state advanced over the drafts before it."""

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            _validate(sampling_params)

        def __init__(self, vllm_config, req_states):
            self.req_states = req_states
            self.engine = _Engine(vllm_config, getattr(req_states, "device", "cpu"))
            self.slots: dict[int, _Row] = {}
            _LIVE.add(self)

        def add_request(self, req_idx: int, sampling_params) -> bool:
            self.slots.pop(req_idx, None)  # slots are recycled: forget the previous occupant
            row = self.engine.new_row(sampling_params)
            if row is None:
                return False
            row.done = None  # the start of its scope is known at its first step
            self.slots[req_idx] = row
            return True

        def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
            if not self.slots:
                return logits
            slots = [int(s) for s in ctx.idx_mapping_np]
            if not any(s in self.slots for s in slots):
                return logits
            try:
                if logits.shape[0] == len(slots):  # one row per request: no speculative rows
                    active = {r: self.slots[s] for r, s in enumerate(slots) if s in self.slots}
                    self._catch_up(active, slots, ctx)
                    self.engine.apply(logits, active)
                else:
                    self._apply_speculative(logits, ctx)
            except Exception:  # never inside the engine: serve this step's cull rows closed
                log.exception("cull: the V2 step failed; its cull rows are served closed")
                rows = self._rows_of(ctx)
                self.engine._close(logits, [r for r, s in enumerate(rows) if s in self.slots
                                            and (self.slots[s].matcher is None or self.slots[s].matcher.all_ban)])
            return logits

        @staticmethod
        def _rows_of(ctx) -> list[int]:
            return [int(s) for s in ctx.expanded_idx_mapping.tolist()]

        def _catch_up(self, active: dict[int, _Row], slots: list[int], ctx) -> None:
            """Advance each row over its tokens since its last step: committed history from
            `all_token_ids`, and the token at the sampled position from this step's `input_ids`,
            gathered into one host copy."""
            history = self.req_states.all_token_ids.gpu
            prompt_len = self.req_states.prompt_len.np
            seq_lens = ctx.seq_lens_upper_bound_np
            pieces, spans = [], []
            for r, row in active.items():
                s = slots[r]
                start = row.done if row.done is not None else (0 if row.include_prompt else int(prompt_len[s]))
                end = int(seq_lens[r])
                if end <= start:
                    continue
                pieces.append(history[s, start:end - 1])
                pieces.append(ctx.input_ids[r:r + 1].to(history.dtype))
                spans.append((row, end - start, end))
            if not pieces:
                return
            flat = torch.cat(pieces).tolist()
            k = 0
            for row, n, end in spans:
                row.advance(flat[k:k + n])
                row.done = end
                k += n

        def _apply_speculative(self, logits: torch.Tensor, ctx) -> None:
            """Speculative decoding: a request owns one row per draft position. The row at local
            position j samples after the committed tokens, the request's first input token and
            drafts 1..j; so each row's state is its request's committed state advanced over the
            inputs of its own request's rows up to itself. Only committed tokens move `done`:
            rejected drafts need no rollback."""
            rows = self._rows_of(ctx)
            local = ctx.expanded_local_pos.tolist()
            pos = ctx.pos.tolist()
            inputs = ctx.input_ids.tolist()
            history = self.req_states.all_token_ids.gpu
            prompt_len = self.req_states.prompt_len.np
            by_slot: dict[int, list[int]] = {}
            for r, s in enumerate(rows):
                if s in self.slots:
                    by_slot.setdefault(s, []).append(r)
            states: dict[int, _Row] = {}
            for s, rs in by_slot.items():
                row = self.slots[s]
                rs.sort(key=lambda r: local[r])
                first = rs[0]
                start = row.done if row.done is not None else (0 if row.include_prompt else int(prompt_len[s]))
                end = pos[first] + 1  # committed through the first row's input token
                if end > start:
                    row.advance(history[s, start:end - 1].tolist() + [inputs[first]])
                    row.done = end
                state = row.state
                for r in rs:
                    if r != first:
                        state = row.matcher.advance(state, inputs[r]) if row.matcher is not None else state
                    view = _Row(row.matcher, row.include_prompt)
                    view.state, view.tokens, view.done = state, (), 0
                    states[r] = view
            self.engine.apply(logits, states)

else:  # pragma: no cover
    CullLogitsProcessorV2 = None


warm_server_lists()
