"""cull: take unwanted words and phrases out of what LLMs write.

>>> import cull
>>> rules = cull.PhraseSet(["delve", "I hope this letter finds you well"])
>>> [m.rule.text for m in cull.find("They DELVE into it. I hope this letter finds you well!", rules)]
['delve', 'I hope this letter finds you well']

With a Hugging Face model and its tokenizer:

    proc = cull.CullLogitsProcessor(rules, tokenizer)
    model.generate(**inputs, logits_processor=[proc])
"""
from cull.errors import CullError, MissingExtraError, RuleError
from cull.rules.find import Match, find
from cull.rules import BAN, BIAS, Options, PhraseSet, Rule

from cull.version import __version__

__all__ = [
    "BAN", "BIAS", "CullError", "Match", "MissingExtraError", "Options", "PhraseSet", "Rule",
    "RuleError", "find", "__version__",
]

_LAZY = {  # imported on first use, so `cull --help` does not wait for torch
    "compile_rules": "cull.compile.cache",
    "CompiledMatcher": "cull.compile.matcher",
    "CullLogitsProcessor": "cull.decode.processor",
    "token_sequence_processor": "cull.decode.processor",
}
__all__ += list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cull' has no attribute {name!r}")
