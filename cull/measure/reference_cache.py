"""The reference model's half of `cull eval`, kept on disk (`cull eval --reference-cache FILE`).

Comparing several fine-tunes with one base measures the base again each time: on a CPU that is
half of every run (558 generations and three perplexities for SmolLM2). The cache holds the
reference's generations and measurements as JSON, under a key made of everything they depend on
(`cache_key`): a digest of the reference's weights, its end ids, the tokenizer's vocabulary, chat
template and prompt ids, the phrase list and its options, the clean and human texts, every sampling
setting and the library versions. A run whose key differs measures the reference again and
replaces the file, and says so; nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from cull.errors import CullError

FORMAT = 1


def model_fingerprint(model) -> str:
    """sha256 over every tensor of the model: its name, shape, dtype and all its bytes (a second or two
    for a 135M-parameter model; a sample of the values would miss a fine-tune that moved a few rows)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(model, tok, rules, prompts, settings: dict, clean_texts=None, human_texts=None) -> str:
    """Everything the reference's measurements depend on: its weights and generation config (the end
    ids), the tokenizer (vocabulary, chat template and the prompt ids it builds), the phrase list and
    its options, the texts, the sampling settings, and the versions of cull, transformers and torch."""
    import torch
    import transformers

    from cull.decode.tokens import eos_ids
    from cull.measure.generate import prompt_ids
    from cull.version import __version__

    vocab = hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode("utf-8", "surrogatepass")).hexdigest()
    body = {"format": FORMAT, "versions": [__version__, transformers.__version__, torch.__version__],
            "model": model_fingerprint(model), "eos": eos_ids(tok, model), "vocab": vocab,
            "chat_template": getattr(tok, "chat_template", None),
            "prompts": [[p, prompt_ids(tok, p, settings.get("chat"))] for p in prompts],
            "rules": [r.text + "|" + r.action + "|" + repr(r.delta) for r in rules], "options": rules.options.key(),
            "settings": settings, "clean": clean_texts, "human": human_texts}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode("utf-8", "surrogatepass")).hexdigest()


def load(path, key: str) -> tuple[dict | None, str]:
    """(the cached reference result, "reused") when the file holds one for `key`, its generations as
    plain dicts (`evaluate` makes them Generations again); else (None, "absent") or (None, "stale":
    made for other inputs or by another version of the cache)."""
    path = Path(path)
    if not path.is_file():
        return None, "absent"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CullError(f"the reference cache {path} is not readable JSON ({exc}); delete it to measure again") \
            from None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None, "stale"
    ref = doc.get("result")
    if not isinstance(ref, dict) or not isinstance(ref.get("_gens"), list):
        return None, "stale"
    return ref, "reused"


def save(path, key: str, ref: dict) -> str | None:
    """Write the reference result for `key` (atomically, through a unique temporary file, so runs
    sharing one cache never read half a file); returns why it could not, or None."""
    path = Path(path)
    keep = {k: v for k, v in ref.items() if not k.startswith("_") or k in ("_clean_replies",)}
    keep["_gens"] = [asdict(g) for g in ref["_gens"]]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, "result": keep}, f)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the cache is an ordinary file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        return str(exc)
    return None
