"""Generate text with a HF model, optionally through a cull processor, streaming as it goes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from cull.errors import CullError, require


@dataclass
class GenerationResult:
    text: str  # the new text only, special tokens left out
    n_tokens: int  # new tokens, EOS included
    seconds: float  # wall time of model.generate (prefill + decode)
    prompt_tokens: int
    processor_seconds: float = 0.0  # time spent inside the processors, when timed

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0


class _CallbackStreamer:
    """A minimal `transformers` streamer: decodes the new tokens and hands each new piece of text to
    `callback`. It holds back text that ends in a half-written UTF-8 character."""

    def __init__(self, tokenizer, callback: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.callback = callback
        self.tokens: list[int] = []
        self.sent = 0
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt
            self._prompt_seen = True
            return
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.callback(text[self.sent:])
            self.sent = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if len(text) > self.sent:
            self.callback(text[self.sent:])
            self.sent = len(text)


class TimedProcessor:
    """Wraps a logits processor and adds up the wall time spent in it."""

    def __init__(self, processor):
        self.processor = processor
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, input_ids, scores):
        t0 = time.perf_counter()
        out = self.processor(input_ids, scores)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


class BanCounter:
    """Wraps a logits processor and counts its interventions: a ban event is a row-step where the
    tokens it set to -inf held at least `threshold` of the model's probability."""

    def __init__(self, processor, threshold: float = 0.01):
        self.processor, self.threshold = processor, threshold
        self.events, self.removed_mass, self.row_steps = 0, 0.0, 0

    def __call__(self, input_ids, scores):
        import torch

        p = torch.softmax(scores.float(), -1)
        was = torch.isinf(scores)
        scores = self.processor(input_ids, scores)
        removed = (p * (torch.isinf(scores) & ~was)).sum(-1)
        self.events += int((removed >= self.threshold).sum())
        self.removed_mass += float(removed.sum())
        self.row_steps += scores.shape[0]
        return scores



class BanTally(BanCounter):
    """A BanCounter that also counts the steps at which the processor changed what the model would
    write. `top_changed`: steps where the model's most likely next token (temperature does not move
    it) was banned or biased below another. `masked` (= `events`): steps where the tokens the
    processor newly set to -inf held at least `threshold` of the probability. Both count rows of
    the batch, one per step for a single generation."""

    def __init__(self, processor, threshold: float = 0.01):
        super().__init__(processor, threshold)
        self.top_changed = 0

    @property
    def steps(self) -> int:
        return self.row_steps

    @property
    def masked(self) -> int:
        return self.events

    def __call__(self, input_ids, scores):
        top = scores.argmax(-1)
        scores = super().__call__(input_ids, scores)
        top_score = scores.gather(-1, top[:, None])[:, 0]
        self.top_changed += int((top_score < scores.max(-1).values).sum())
        return scores


def build_prompt_ids(tok, prompt: str, chat: bool | None = None, system: str | None = None):
    """Token ids [1, L] for `prompt`: through the chat template when the tokenizer has one (unless
    chat=False), else the raw text; an empty raw prompt becomes just the BOS token."""
    torch = require("torch", "hf")
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
    if use_chat:
        if not getattr(tok, "chat_template", None):
            raise CullError("this tokenizer has no chat template; leave out --chat to use the raw prompt")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = list(ids["input_ids"])
    else:
        ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
    if not ids:
        if tok.bos_token_id is None:
            raise CullError("the prompt is empty and the tokenizer has no BOS token to start from; "
                            "give a non-empty --prompt")
        ids = [tok.bos_token_id]
    return torch.tensor([ids], dtype=torch.long)


def prompt_ids(tok, prompt: str, chat: bool | None = None) -> list[int]:
    """Token ids of one prompt: the chat template when the tokenizer has one (chat=None) or when
    chat=True (an error if it has none); else the raw text, an empty prompt being just BOS."""
    if chat and not getattr(tok, "chat_template", None):
        raise CullError("chat prompts were asked for, but this model's tokenizer has no chat template; "
                        "use raw prompts (chat=False, --raw) or a model with a chat template")
    return build_prompt_ids(tok, prompt, chat=chat)[0].tolist()


def generate_text(model, tok, prompt: str, processor=None, *, max_new_tokens: int = 128,
                  do_sample: bool = False, temperature: float = 1.0, top_p: float | None = None,
                  seed: int | None = None, stream: Callable[[str], None] | None = None,
                  chat: bool | None = None, system: str | None = None,
                  time_processor: bool = False) -> GenerationResult:
    """Generate a reply to `prompt` (greedy by default) and return its text, token count and time.

    `processor` is a logits processor (e.g. `cull.CullLogitsProcessor`) or a list of them.
    `stream(text_piece)` is called as text is produced. The chat template is applied when the
    tokenizer has one (instruct models); `chat=False` sends the raw prompt."""
    torch = require("torch", "hf")
    require("transformers", "hf")
    if max_new_tokens < 1:
        raise CullError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if do_sample and not 0 < temperature < float("inf"):
        raise CullError(f"temperature must be above 0 and finite when sampling, got {temperature}")
    input_ids = build_prompt_ids(tok, prompt, chat=chat, system=system).to(model.device)
    procs = [] if processor is None else list(processor) if isinstance(processor, (list, tuple)) else [processor]
    timers = [TimedProcessor(p) for p in procs] if time_processor else procs
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                  attention_mask=torch.ones_like(input_ids),
                  pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    if do_sample:
        kwargs["temperature"] = temperature
        if top_p is not None:
            kwargs["top_p"] = top_p
    else:  # greedy: clear any sampling defaults so transformers does not warn about them
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if timers:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(timers)
    if stream is not None:
        kwargs["streamer"] = _CallbackStreamer(tok, stream)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(input_ids, **kwargs)
        seconds = time.perf_counter() - t0
    new = out[0, input_ids.shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    proc_s = sum(t.seconds for t in timers) if time_processor else 0.0
    return GenerationResult(text, int(new.numel()), seconds, int(input_ids.shape[1]), proc_s)
