"""The keyword prefilter: which rules' keywords occur in a text, found in one pass, so that most
texts run no rule at all (gitleaks' `keywords`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import re2  # type: ignore[import-untyped]


class KeywordPrefilter:
    """Which of a set of lower-case keywords occur in a text, in any case: one pass of RE2's
    multi-pattern matcher, a DFA over the text's UTF-8 bytes, so the cost per character does
    not grow with the number of keywords (Python's `re` tries an alternation at every place a
    keyword could start). RE2 folds case as Unicode's simple folding does, so it finds every
    keyword `text.lower()` would hold, and a few more (`ſ` for `s`): a prefilter may say yes
    too often, never too rarely.
    """

    # The automaton of a few hundred keywords needs well under a MiB of DFA states; RE2 gives
    # up (and would answer "none") only if its budget ran out, so the budget is far above that.
    _MAX_MEM = 64 << 20

    def __init__(self, keywords: Sequence[str]):
        self._keywords: dict[int, str] = {}
        self._match: Any = None
        if not keywords:
            return
        options = re2.Options()
        options.literal = True
        options.case_sensitive = False
        options.max_mem = self._MAX_MEM
        options.log_errors = False
        matcher = re2.Set.SearchSet(options)
        for keyword in sorted(set(keywords)):
            self._keywords[matcher.Add(keyword)] = keyword
        matcher.Compile()
        # The wrapper's Match only checks for str and turns [] into None around the extension's
        # own, which answers the same for bytes: called directly, a text costs less, and most
        # texts are only prefiltered (bench/RESULTS.md, secrets). A wrapper without it is
        # called as it is.
        self._match = getattr(matcher, "_set", matcher).Match

    def present(self, data: bytes) -> set[str]:
        """The keywords in `data` (UTF-8; lone surrogates as 'surrogatepass' writes them)."""
        if self._match is None:
            return set()
        hits = self._match(data)
        return {self._keywords[i] for i in hits} if hits else set()
