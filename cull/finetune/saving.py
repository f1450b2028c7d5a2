"""Writing the fine-tuned model: LoRA and the phrase rows merged into the weights, or the adapter alone."""
from __future__ import annotations

from pathlib import Path

from cull.finetune.phrase_rows import find_rows


def save_model(model, tok, out: Path, *, full: bool, adapter_only: bool, base_path: str | None,
               dtype: str = "fp32"):
    """Write a merged model (or, with adapter_only, the LoRA adapter) that `from_pretrained` loads.
    Returns ("merged" or "adapter", the model to use from now on)."""
    if adapter_only and not full:
        if base_path:
            model.peft_config["default"].base_model_name_or_path = str(base_path)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return "adapter", model
    merged = model if full else model.merge_and_unload()
    rows = find_rows(merged)
    if rows is not None:
        rows.merge_into(merged)
    if hasattr(merged.config, "quantization_config"):  # loaded from a GGUF: save it as a plain model
        del merged.config.quantization_config
    if dtype == "bf16":
        import torch

        merged = merged.to(torch.bfloat16)
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    return "merged", merged
