"""Which tokens cull's processor would ban at every position of the retain samples.

The retain set keeps the tuned model's distribution at every retain position close to the base's.
With `LossWeights.retain_under_processor` the retain samples are drawn with the processor on, and the
target there is the base *as cull's processor leaves it*: the tokens the processor sets to -inf at
that position (those that would complete a banned phrase) get no target mass, and the rest is
renormalised. The phrases then lose probability in every context where the base gave them some, not
only at the few hundred hit contexts of the preference examples; such a context is what a ban event
(`cull.measure.generate.BanCounter`) counts.

The sets come from the processor itself, run over each sequence as generation would run it, so they
follow the matcher's semantics exactly (case, word boundaries, tokenizations).
"""
from __future__ import annotations

EVENT_MASS = 0.01  # a position where the base gives the banned tokens this much is a ban event


def banned_per_position(processor, ids: list[int], positions: list[int], vocab_size: int,
                        start: int | None = None) -> list[tuple]:
    """For each index p in `positions` (ascending, none before `start`), the ids the processor bans
    as the token at p given ids[:p]. The tokens before `start` (default: positions[0]) are the
    prompt; the processor steps through every token from there, as generation would, so positions
    may skip. Equal sets share one tuple."""
    import torch

    if not positions:
        return []
    start = positions[0] if start is None else start
    if positions[0] < start or any(b <= a for a, b in zip(positions, positions[1:])):
        raise ValueError(f"positions must be ascending and from {start} on, got {positions[:5]}...")
    processor.reset()
    zeros = torch.zeros(1, vocab_size)
    seq = torch.as_tensor(ids, dtype=torch.long)[None]
    wanted = set(positions)
    shared: dict[tuple, tuple] = {}
    out = []
    for p in range(start, positions[-1] + 1):
        row = processor(seq[:, :p], zeros)[0]
        if p in wanted:
            ban = tuple(torch.isinf(row).nonzero()[:, 0].tolist())
            out.append(shared.setdefault(ban, ban))
    return out


def attach_banned(retain: list, rules, tok, vocab_size: int) -> int:
    """Set `banned` (one tuple of ids per position) on every retain example; returns the number of
    positions where at least one token is banned."""
    from cull.decode.processor import CullLogitsProcessor

    proc = CullLogitsProcessor(rules, tok, vocab_size=vocab_size, backend="torch", device_state=False)
    n = 0
    for r in retain:
        r.banned = banned_per_position(proc, r.ids, r.positions, vocab_size, r.start)
        n += sum(1 for b in r.banned if b)
    return n


def banned_mask(retain: list, n_rows: int, vocab_size: int, device):
    """[n_rows, V] bool: row k (the k-th retained position, in `retain_logits` order) marks the banned
    ids there; None when no example has banned sets."""
    import torch

    if not any(getattr(r, "banned", None) for r in retain):
        return None
    rows, cols = [], []
    k = 0
    for r in retain:
        for ban in (r.banned or [()] * len(r.positions)):
            rows += [k] * len(ban)
            cols += ban
            k += 1
    if k != n_rows:
        raise ValueError(f"banned sets cover {k} positions, the logits {n_rows}")
    mask = torch.zeros(n_rows, vocab_size, dtype=torch.bool, device=device)
    if rows:
        mask[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = True
    return mask


def base_banned_mass(r) -> list[float]:
    """Per position of a retain example with banned sets, the base's probability (from its stored
    top K) of the tokens banned there."""
    import numpy as np

    ids, logp = np.asarray(r.top_ids), np.asarray(r.top_logp, dtype=np.float32)
    return [float(np.exp(lp[np.isin(row, ban)]).sum()) if ban else 0.0
            for row, lp, ban in zip(ids, logp, r.banned)]
