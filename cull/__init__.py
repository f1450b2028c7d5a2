"""cull: take unwanted words and phrases out of what LLMs write.

    import cull
    rules = cull.PhraseSet(["delve", "I hope this letter finds you well"])
    proc = cull.CullLogitsProcessor(rules, tokenizer)
    model.generate(**inputs, logits_processor=[proc])
"""
from .errors import CullError, MissingExtraError, RuleError
from .find import Match, find
from .rules import BAN, BIAS, Options, PhraseSet, Rule

__version__ = "0.1.0"

__all__ = [
    "BAN", "BIAS", "CullError", "Match", "MissingExtraError", "Options", "PhraseSet", "Rule",
    "RuleError", "find", "__version__",
]

from .compile_rules import compile_rules  # noqa: E402
from .compiled import CompiledMatcher  # noqa: E402
from .processor import CullLogitsProcessor, token_sequence_processor  # noqa: E402

__all__ += ["CompiledMatcher", "CullLogitsProcessor", "compile_rules", "token_sequence_processor"]
