"""The fine-tune's training data: preference and retain examples, and their JSON + .npz files."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PreferenceExample:
    context: list  # prompt + generated ids before the rejected token
    rejected: int
    chosen: list  # acceptable alternatives, most likely first
    phrase: str
    p_rejected: float = 0.0
    prompt_index: int = -1
    chosen_continuation: list = field(default_factory=list)  # first chosen + its greedy continuation
    rejected_continuation: list = field(default_factory=list)  # the sample's own tokens from `rejected` on
    ref_logits: object = None  # [V] float16 numpy: the reference's logits at the context (tether)


@dataclass
class RetainExample:
    ids: list  # prompt + generated ids
    positions: list  # indices i: the distribution predicting ids[i] is kept close to the reference
    top_ids: object = field(default_factory=list)  # [len(positions), K] reference's top-K token ids
    top_logp: object = field(default_factory=list)  # [len(positions), K] their log-probs
    prompt_index: int = -1
    banned: object = None  # per position, the ids cull's processor bans there (cull.finetune.banned; not saved)
    start: int | None = None  # index of the first generated token (None: positions[0])


@dataclass
class FinetuneData:
    preference: list
    retain: list
    stats: dict
    negatives: list = field(default_factory=list)  # [ids, prompt length] of samples with a hit (NAT baseline)
    val_preference: list = field(default_factory=list)
    val_retain: list = field(default_factory=list)
    # multi-token spellings placed in retain samples (cull.finetune.spellings); rebuilt, not saved
    spelling: list = field(default_factory=list)
    val_spelling: list = field(default_factory=list)
    # replies to prompts that name a phrase (cull.finetune.mentions); saved apart, in OUT/mentions.json
    mentions: list = field(default_factory=list)
    val_mentions: list = field(default_factory=list)

    def save(self, path) -> None:
        import numpy as np

        path = Path(path)
        arrays, doc = {}, {"stats": self.stats, "negatives": self.negatives}
        for name in ("preference", "val_preference"):
            items = []
            for i, e in enumerate(getattr(self, name)):
                d = {k: v for k, v in e.__dict__.items() if k != "ref_logits"}
                if e.ref_logits is not None:
                    arrays[f"{name}.{i}.ref_logits"] = np.asarray(e.ref_logits, dtype=np.float16)
                items.append(d)
            doc[name] = items
        for name in ("retain", "val_retain"):
            items = []
            for i, r in enumerate(getattr(self, name)):
                items.append({"ids": r.ids, "positions": r.positions, "prompt_index": r.prompt_index, "start": r.start})
                arrays[f"{name}.{i}.top_ids"] = np.asarray(r.top_ids, dtype=np.int32)
                arrays[f"{name}.{i}.top_logp"] = np.asarray(r.top_logp, dtype=np.float16)
            doc[name] = items
        np.savez(path.with_suffix(".npz"), **arrays)
        path.write_text(json.dumps(doc))  # last: a complete .json means a complete .npz

    @classmethod
    def load(cls, path) -> "FinetuneData":
        import numpy as np

        path = Path(path)
        doc = json.loads(path.read_text())
        npz = path.with_suffix(".npz")
        arrays = dict(np.load(npz, allow_pickle=False)) if npz.is_file() else {}
        out = {}
        for name in ("preference", "val_preference"):
            out[name] = [PreferenceExample(**e, ref_logits=arrays.get(f"{name}.{i}.ref_logits"))
                         for i, e in enumerate(doc.get(name, []))]
        for name in ("retain", "val_retain"):
            out[name] = [RetainExample(r["ids"], r["positions"], arrays.get(f"{name}.{i}.top_ids", r.get("top_ids", [])),
                                       arrays.get(f"{name}.{i}.top_logp", r.get("top_logp", [])),
                                       r.get("prompt_index", -1), start=r.get("start"))
                         for i, r in enumerate(doc.get(name, []))]
        return cls(out["preference"], out["retain"], doc["stats"], doc.get("negatives", []), out["val_preference"],
                   out["val_retain"])
