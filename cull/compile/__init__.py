"""Compile: a vocabulary and a rule set become the automaton's tables (built once, cached on disk)."""
