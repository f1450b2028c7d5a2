"""Trainable output rows for the tokens that start a phrase in any context.

LoRA on the attention and MLP layers learns *where* a phrase would come, so its removal reaches only
contexts like the training ones. Many slop words start with a token that cull's processor bans
almost everywhere (" tapestry", " vibrant"): for those a change to the token's own output-embedding
row lowers its logit in every context at once. `PhraseRows` adds a trainable delta to those rows
(a forward hook on the output layer, so it composes with peft) and folds it into the weights when
the model is saved. With tied input and output embeddings the output layer is untied first, so the
model still reads these words in a prompt as the base did.

Which tokens: those banned at at least `min_share` of the clean retain positions
(`cull.finetune.banned`), i.e. the tokens whose ban does not depend on the context.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

ATTR = "cull_phrase_rows"
# architectures whose loaders insist on tied embeddings (vLLM's Gemma models assert it): no rows there
TIED_ONLY = {"gemma", "gemma2", "gemma3", "gemma3_text"}


def rows_supported(model) -> str | None:
    """None when the rows can be folded into this model's weights, else why not."""
    kind = getattr(model.config, "model_type", "")
    if kind in TIED_ONLY:
        return f"{kind} models must keep their input and output embeddings tied (vLLM requires it)"
    if model.get_output_embeddings() is None:
        return "the model has no output embedding layer"
    return None


def context_free_tokens(retain: list, min_share: float = 0.5) -> list[int]:
    """Ids banned at >= `min_share` of the positions of `retain` (examples with `banned` sets)."""
    counts, n = Counter(), 0
    for r in retain:
        for ban in getattr(r, "banned", None) or []:
            counts.update(ban)
            n += 1
    return sorted(t for t, c in counts.items() if n and c >= min_share * n)


class PhraseRows:
    """A delta [len(ids), hidden] added to the output rows `ids`. It is registered on the output
    layer as the parameter `cull_row_delta`, so the optimizer, accelerate and the checkpoint
    restore see it like any trainable parameter; `merge_into` folds it into the weights."""

    PARAM = "cull_row_delta"

    def __init__(self, model, ids: list[int]):
        import torch

        head = model.get_output_embeddings()
        self.head = head
        self.ids = torch.tensor(ids, dtype=torch.long, device=head.weight.device)
        # fp32 whatever the model's dtype (as peft keeps LoRA weights), cast in the hook
        self.delta = torch.nn.Parameter(torch.zeros(len(ids), head.weight.shape[1], device=head.weight.device))
        head.register_parameter(self.PARAM, self.delta)
        self.enabled = True
        self._handle = head.register_forward_hook(self._hook)
        setattr(model, ATTR, self)  # found again through the model, also under a peft wrapper

    def _hook(self, module, inputs, out):
        if not self.enabled:
            return out
        return out.index_add(-1, self.ids, (inputs[0] @ self.delta.t().to(inputs[0].dtype)).to(out.dtype))

    def merge_into(self, model) -> None:
        """Fold the delta into the output layer (untied from the input embeddings first) and remove
        the hook and the parameter: the saved model needs nothing of cull's to load."""
        import torch

        self._handle.remove()
        head = self.head
        del head._parameters[self.PARAM]
        tied = head.weight is model.get_input_embeddings().weight
        with torch.no_grad():
            weight = head.weight.detach().clone() if tied else head.weight
            weight[self.ids] += self.delta.detach().to(weight.dtype)
        if tied:
            head.weight = torch.nn.Parameter(weight, requires_grad=False)
        # loaders that tie by the config alone (vLLM) must see the output layer as its own
        for cfg in (model.config, getattr(model.config, "text_config", None)):
            if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
                cfg.tie_word_embeddings = False
        model.__dict__.pop(ATTR, None)


def find_rows(model) -> PhraseRows | None:
    """The PhraseRows of a model, also through a peft wrapper (which forwards attributes)."""
    try:
        return getattr(model, ATTR)
    except AttributeError:
        return None


@contextmanager
def rows_off(model):
    """The model without its row delta (the original base, with the adapter also switched off)."""
    rows = find_rows(model)
    if rows is None:
        yield
        return
    was, rows.enabled = rows.enabled, False
    try:
        yield
    finally:
        rows.enabled = was
