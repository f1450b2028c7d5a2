"""Rules: what a phrase or regex rule is, how rule files are read, and what rules match (`find`)."""
from cull.rules.phrase_set import PhraseSet, as_phrase_set
from cull.rules.rule import BAN, BIAS, MAX_PHRASE_CHARS, Options, Rule, make_rule, multiplier_to_delta

__all__ = ["BAN", "BIAS", "MAX_PHRASE_CHARS", "Options", "PhraseSet", "Rule", "as_phrase_set", "make_rule",
           "multiplier_to_delta"]
