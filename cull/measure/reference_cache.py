"""The reference model's half of `cull eval`, kept on disk (`cull eval --reference-cache FILE`).

Comparing several fine-tunes with one base measures the base again each time: on a CPU that is
half of every run (558 generations and three perplexities for SmolLM2). The cache holds the
reference's generations and measurements as JSON, under a key made of everything they depend on:
the reference's weights (a fingerprint of every tensor), the tokenizer, the prompts, the phrase
list and its options, the clean and human texts and every sampling setting. A run whose key
differs measures the reference again and replaces the file, and says so; nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from cull.errors import CullError

FORMAT = 1


def model_fingerprint(model) -> str:
    """A digest of the model's weights: every tensor's name, shape, dtype and a strided sample of its
    values (a different fine-tune or quantisation changes it; hashing all 135M values takes seconds
    more and tells nothing more in practice)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_key(model, tok, rules, prompts, settings: dict, clean_texts=None, human_texts=None) -> str:
    body = {"format": FORMAT, "model": model_fingerprint(model), "vocab": len(tok),
            "tokenizer": type(tok).__name__, "prompts": list(prompts),
            "rules": [r.text + "|" + r.action + "|" + repr(r.delta) for r in rules], "options": rules.options.key(),
            "settings": settings, "clean": clean_texts, "human": human_texts}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode("utf-8", "surrogatepass")).hexdigest()


def load(path, key: str):
    """The cached reference result for `key`, or None (no file, or one made for other inputs)."""
    from cull.measure.evaluate import Generation

    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CullError(f"the reference cache {path} is not readable JSON ({exc}); delete it to measure again") \
            from None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    ref = doc["result"]
    ref["_gens"] = [Generation(**g) for g in ref["_gens"]]
    return ref


def save(path, key: str, ref: dict) -> None:
    path = Path(path)
    keep = {k: v for k, v in ref.items() if not k.startswith("_") or k in ("_clean_replies",)}
    keep["_gens"] = [asdict(g) for g in ref["_gens"]]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"key": key, "result": keep}))
    os.replace(tmp, path)
