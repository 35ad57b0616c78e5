"""Whether a page's description speaks of that page: the share of its content words the page
itself uses.

A description written for another page, or claiming what the page never covers, names things
the page does not: "Explains how to schedule commands like cron" on a page about commands and
groups. Its content words (not the common words, not the verbs every description opens with),
reduced to their stems (Snowball's English stemmer, so "opening" is "open"), are looked up among
the page's own (split at underscores too, and where the page abbreviates: "sync" for
"synchronization"); the share found is the description's *grounding*, from 0 to 1, and the words
the page does not have are named. It is a check of the docs gate
(:mod:`pantheon.core.work.doccheck`, ``description speaks of the page``): the writer is asked
again for a description under :data:`GROUNDED_MIN`, and the test gate fails one committed
(``gates.grounding_min``, ``--grounding-min``: 0 turns it off).

``bench/claims.py`` measures it: on the project's own corpus (where the threshold was chosen)
and on real pages it was never tuned on (click's documentation), the AUROC of the grounding of
right descriptions against those of another page and those that claim a missing feature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

__all__ = ["GROUNDED_MIN", "STOPWORDS", "Grounding", "grounding"]

GROUNDED_MIN = 0.35
"""A description with fewer than this share of its content words on the page is not grounded.
Chosen on the project's own corpus (its right descriptions score 0.5 and more; at 0.35 as at
0.5, 8 of its 10 other pages' descriptions are caught) and on the 1.5B writer's replies in a
demo night, whose right paraphrases ("retrieves" for the page's "reads") score 0.36 to 0.44."""

_STOPWORDS = """
    a an the and or but nor of to in on for with from by as at into onto about over under
    than then so such via per is are was were be been being it its this that these those
    there their them they you your we our us he she his her one each every all any some
    more most other another own same both either neither not no can could may might must
    shall should will would do does did done doing have has had how what why when where
    which who whom whose while also just only very too well even still yet here up out off down
    shows show explains explain describes describe lists list covers cover introduces
    introduce gives give walks walk tells tell says say notes note guide guides page pages
    tour tours collects collect presents present documents document gets get started
    learn learns reader readers use uses using used way ways
    including include includes such like etc parameter parameters argument arguments option
    options method methods function functions library module modules
"""
STOPWORDS = frozenset(_STOPWORDS.split())
"""Words a description uses whatever its page: a page that lacks them says nothing about it."""

ABBREVIATION_MIN = 4
"""The shortest word of a page taken as an abbreviation of a description's word."""

_WORD = re.compile(r"[a-z][a-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Grounding:
    share: float
    """Of the description's content words, the share the page uses (1.0 when it has none)."""
    words: int
    """The description's content words."""
    missing: tuple[str, ...]
    """Its content words the page does not use, in order."""

    @property
    def grounded(self) -> bool:
        return self.share >= GROUNDED_MIN


@lru_cache(maxsize=1)
def _stemmer() -> snowballstemmer.stemmer:
    return snowballstemmer.stemmer("english")


def _content(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def _found(stem: str, seen: set[str]) -> bool:
    """Whether the page has the stem, or an abbreviation of it: a word of at least
    :data:`ABBREVIATION_MIN` letters it begins with, at most half its length ("sync" for
    "synchronization"; never "back" for "backup")."""
    if stem in seen:
        return True
    return any(ABBREVIATION_MIN <= len(s) <= len(stem) // 2 and stem.startswith(s) for s in seen)


def grounding(description: str, page: str) -> Grounding:
    """How much of ``description`` the text of ``page`` speaks of."""
    stem = _stemmer().stemWord
    words = _content(description)
    if not words:
        return Grounding(1.0, 0, ())
    seen = {stem(part) for w in _content(page) for part in {w, *w.split("_")} if part}
    missing = tuple(w for w in words if not _found(stem(w), seen))
    return Grounding(1.0 - len(missing) / len(words), len(words), missing)
