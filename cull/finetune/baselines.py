"""The DPO baseline: TRL's `DPOTrainer` on (clean, slop) pairs built from the same data as cull's.

Each preference example with an acceptable alternative gives one pair at its context (the decision
point of a hit): "chosen" is the first alternative plus its greedy continuation (the text the
lookahead checked to be clean), "rejected" is the sample's own tokens from the rejected token on,
as many. LoRA with the same settings as `cull finetune`; the reference is the base (TRL switches
the adapter off for it). Needs the optional extra: `pip install 'cull-lm[trl]'`.
"""
from __future__ import annotations

import time
from pathlib import Path

from cull.errors import CullError, require


def dpo_pairs(data, tok) -> list[dict]:
    """{"prompt", "chosen", "rejected"} texts, one per example with a clean alternative."""
    bos = tok.bos_token_id
    rows = []
    for e in data.preference:
        if not e.chosen_continuation or not e.rejected_continuation:
            continue
        ctx = e.context[1:] if bos is not None and e.context[:1] == [bos] else e.context
        n = min(len(e.chosen_continuation), len(e.rejected_continuation))
        rows.append({"prompt": tok.decode(ctx, skip_special_tokens=False),
                     "chosen": tok.decode(e.chosen_continuation[:n], skip_special_tokens=True),
                     "rejected": tok.decode(e.rejected_continuation[:n], skip_special_tokens=True)})
    return rows


def train_dpo(model, tok, data, out_dir, *, steps: int = 60, lr: float = 5e-4, batch_size: int = 8,
              beta: float = 0.1, lora_r: int = 8, lora_alpha: int = 16, seed: int = 0, say=print):
    """Train `model` with TRL's DPOTrainer on `dpo_pairs(data)`; merge the LoRA adapter and save
    the model to `out_dir`. Returns (merged model, summary)."""
    require("trl", "trl")
    require("datasets", "trl")
    require("peft", "finetune")
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from cull.finetune.train import lora_target_modules

    pairs = dpo_pairs(data, tok)
    if not pairs:
        raise CullError("no preference example has a clean alternative, so there are no DPO pairs; sample more "
                        "(--n-samples) or raise top_k")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    args = DPOConfig(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=batch_size,
                     learning_rate=lr, beta=beta, logging_steps=10, save_strategy="no", report_to=[],
                     use_cpu=not torch.cuda.is_available(), seed=seed, remove_unused_columns=False,
                     lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10), disable_tqdm=True)
    peft_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                             target_modules=lora_target_modules(model))
    t = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok,
                         peft_config=peft_config)
    trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    say(f"DPO: {len(pairs)} pairs, {steps} steps in {time.perf_counter() - t:.0f} s")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return merged, {"pairs": len(pairs), "train_s": time.perf_counter() - t, "log": logs}
