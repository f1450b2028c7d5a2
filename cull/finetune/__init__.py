"""`cull finetune`: remove phrases from a model permanently.

On-policy preference data from the model's own near misses (`data`), an FTPO-style preference
loss plus unlikelihood plus KL-to-base on clean positions (`loss`), and a LoRA or full fine-tune under
accelerate (`train`). See docs/finetune.md.
"""
from .data import FinetuneData, PreferenceExample, RetainExample, build_data
from .loss import LossWeights, preference_loss, retain_kl, unlikelihood_loss
from .train import FinetuneConfig, finetune

__all__ = ["FinetuneConfig", "FinetuneData", "LossWeights", "PreferenceExample", "RetainExample", "build_data",
           "finetune", "preference_loss", "retain_kl", "unlikelihood_loss"]

from .commands import add_eval_parser, add_finetune_parser, run_eval, run_finetune  # noqa: E402

__all__ += ["add_eval_parser", "add_finetune_parser", "run_eval", "run_finetune"]
