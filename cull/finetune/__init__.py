"""`cull finetune`: remove phrases from a model permanently.

On-policy preference data from the model's own near misses (`data`, `examples`), an FTPO-style
clipped preference loss, gated unlikelihood, a logit tether at the hit contexts and a dense KL retain
on clean samples (`loss`), and a LoRA or full fine-tune under accelerate with warm-up, decay, early
stopping and rounds on policy (`train`, `loop`), plus the UL+MLE and NAT baselines (`steps`) and
TRL's DPO (`baselines`). See docs/finetune.md.
"""
from cull.finetune.data import FinetuneData, PreferenceExample, RetainExample, build_data
from cull.finetune.loss import LossWeights, preference_loss, retain_kl, tether_loss, unlikelihood_loss
from cull.finetune.train import METHODS, FinetuneConfig, finetune

__all__ = ["FinetuneConfig", "FinetuneData", "LossWeights", "METHODS", "PreferenceExample", "RetainExample",
           "build_data", "finetune", "preference_loss", "retain_kl", "tether_loss", "unlikelihood_loss"]
