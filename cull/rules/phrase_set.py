"""PhraseSet: an immutable set of rules plus the options that say how they match."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cull.errors import RuleError
from cull.rules.files import read_rule_file
from cull.rules.rule import BAN, MAX_PHRASE_CHARS, Options, Rule, make_rule


@dataclass(frozen=True)
class PhraseSet:
    """An immutable set of rules plus the options that say how they match.

    >>> rules = PhraseSet(["delve", "I hope this letter finds you well"])        # hard bans
    >>> soft = PhraseSet(["tapestry"], action="bias", bias=-4.0)
    >>> [r.text for r in rules]
    ['delve', 'I hope this letter finds you well']
    """

    rules: tuple[Rule, ...]
    options: Options = field(default_factory=Options)

    def __init__(
        self,
        items: Iterable[str | Rule] = (),
        action: str = BAN,
        bias: float | None = None,
        *,
        whole_words: bool = True,
        ignore_case: bool = True,
        fold_quotes: bool = True,
        ignore_accents: bool = False,
        confusables: bool = False,
        allow_symbols: bool = False,
        max_phrase_chars: int = MAX_PHRASE_CHARS,
    ):
        if isinstance(items, (str, bytes)):
            raise RuleError("PhraseSet takes a list of phrases, got a single string; wrap it: [phrase]")
        rules = []
        for i, item in enumerate(items):
            if isinstance(item, Rule):
                rules.append(item)
            else:
                rules.append(make_rule(item, action, bias, source=f"item {i}",
                                       allow_symbols=allow_symbols, max_chars=max_phrase_chars))
        if not whole_words:
            rules = [
                r if r.regex else Rule(r.phrase, r.action, r.delta, True, True, None, r.source)
                for r in rules
            ]
        object.__setattr__(self, "rules", tuple(rules))
        if confusables:  # say now, not at the first match, that the data is missing
            from cull.text.confusables import data_version

            data_version()
        object.__setattr__(self, "options", Options(whole_words, ignore_case, fold_quotes, ignore_accents,
                                                    confusables))

    @classmethod
    def load(cls, path, action: str | None = None, bias: float | None = None, **options) -> "PhraseSet":
        """Read .txt, .json (strings, objects or antislop [phrase, multiplier] pairs) or .yaml.

        `action` overrides the actions in the file (e.g. action="ban" turns antislop multipliers
        into hard bans). `max_file_bytes` overrides the size limit (`cull.rules.files`, 64 MiB)."""
        max_file_bytes = options.pop("max_file_bytes", None)
        return cls(read_rule_file(path, action, bias, options.get("allow_symbols", False), max_file_bytes),
                   **options)

    def with_rules(self, rules: Iterable[Rule]) -> "PhraseSet":
        """Other rules (already parsed) under these same options: how a subset of the rules is
        matched exactly as the whole set is."""
        subset = object.__new__(PhraseSet)
        object.__setattr__(subset, "rules", tuple(rules))
        object.__setattr__(subset, "options", self.options)
        return subset

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)

    @property
    def phrase_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.regex is None)

    @property
    def regex_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.regex is not None)

    def fingerprint(self) -> str:
        """Stable hash of the rules and options (a compile-cache key); computed once."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            import hashlib

            body = "\0\0".join(sorted(f"{r.text}\0{r.delta!r}" for r in self.rules))
            cached = hashlib.sha256((self.options.key() + "\0" + body).encode("utf-8", "surrogatepass")).hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return cached


def as_phrase_set(rules: "PhraseSet | Sequence[str]") -> PhraseSet:
    if isinstance(rules, PhraseSet):
        return rules
    if isinstance(rules, (list, tuple)):
        return PhraseSet(rules)
    raise RuleError(f"expected a cull.PhraseSet or a list of phrases, got {type(rules).__name__}")
