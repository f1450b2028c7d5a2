"""Decode: the tables at generation time (the HF processor, per-row states, backtracking)."""
