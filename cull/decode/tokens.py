"""Token-id plumbing every generation loop needs: the EOS ids, the pad id, and padded batches."""
from __future__ import annotations


def eos_ids(tok, model=None) -> list[int]:
    """Every id that ends a generation: the model's generation config (an id or a list) and the
    tokenizer's own, without duplicates."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids]
    out = []
    for i in ids + [getattr(tok, "eos_token_id", None)]:
        if i is not None and int(i) not in out:
            out.append(int(i))
    return out


def pad_id(tok) -> int:
    """The pad id, else the EOS id, else 0."""
    for t in (tok.pad_token_id, tok.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def pad_rows(rows: list[list[int]], pad: int, side: str = "right"):
    """(ids, attention mask) of rows padded to one width: left padding for generation, right for scoring.

    >>> ids, mask = pad_rows([[5, 6, 7], [8]], pad=0, side="left")
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, cols] = torch.tensor(r, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def batches(items, size: int):
    """`items` in consecutive chunks of `size` (the last may be shorter)."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
