"""The checks a careful reviewer makes of a page's frontmatter, each by name.

The limits the model must keep are asked for in its prompt and checked here, after the reply —
never enforced by a grammar that cuts the model's text where a limit falls. ``doc.frontmatter``
runs them on the model's reply (a reply that breaks one gets the corrective retry with the
reasons), and the docs ``test`` gate runs them again on the file as committed, naming each check
in its output so the morning review sees why.

- **title**: present, one line, at most 80 characters;
- **description is one sentence**: one complete sentence (ends with . ! or ?), not two;
- **description length**: 20 to 200 characters;
- **description in its own words**: not copied from the page (no run of 10 or more words, or
  of most of its own words, taken verbatim from the body);
- **description speaks of the page** (``grounded_min`` above 0): at least that share of its
  content words are the page's own (:mod:`pantheon.core.work.grounding`): a description of
  another page, or of a feature the page lacks, names what the page does not;
- **tags**: 1 to 5 distinct lowercase keywords of a word or two (letters, digits, ``_ + # . -``);
- **body kept** (the gate): the page's text is still there.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import yaml

from pantheon.core.work.grounding import grounding

__all__ = [
    "DESCRIPTION_MAX",
    "GROUNDED",
    "TITLE_MAX",
    "Check",
    "check_frontmatter",
    "failed_checks",
    "split_frontmatter",
]

TITLE_MAX = 80
DESCRIPTION_MIN = 20
DESCRIPTION_MAX = 200
TAGS_MAX = 5
TAG_MAX = 24
COPY_RUN = 10
"""Words in a row taken from the body that make a description a copy."""
GROUNDED = "description speaks of the page"

_TAG = re.compile(r"^[a-z0-9][a-z0-9_+#.\-]*( [a-z0-9][a-z0-9_+#.\-]*)?$")
_END = re.compile(r"[.!?][\"')\]]*$")
# a sentence end inside the text: punctuation, space, then a capital or a digit
_INNER_END = re.compile(r"(?<![A-Z][a-z])(?<!\be\.g)(?<!\bi\.e)(?<!\betc)[.!?]\s+[A-Z0-9]")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    why: str = ""


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _plain(markdown: str) -> str:
    text = re.sub(r"```.*?```", " ", markdown, flags=re.DOTALL)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return text


def copied_run(description: str, body: str) -> int:
    """The longest run of words the description shares, in order, with the body."""
    a, b = _words(description), _words(_plain(body))
    if not a or not b:
        return 0
    match = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(
        0, len(a), 0, len(b)
    )
    return match.size


def check_frontmatter(
    meta: Any, body: str | None = None, *, grounded_min: float = 0.0
) -> list[Check]:
    """Every check of ``meta`` (the frontmatter, a mapping); the body checks when it is given
    (the description's grounding on it too, when ``grounded_min`` is above 0)."""
    if not isinstance(meta, dict):
        return [Check("frontmatter", False, "no YAML frontmatter mapping at the top of the file")]
    out: list[Check] = []
    title = meta.get("title")
    if not isinstance(title, str) or not title.strip():
        out.append(Check("title", False, "the title is missing or empty"))
    elif "\n" in title.strip() or len(title.strip()) > TITLE_MAX:
        out.append(
            Check("title", False, f"the title must be one line of at most {TITLE_MAX} characters")
        )
    else:
        out.append(Check("title", True))
    desc = meta.get("description")
    if not isinstance(desc, str) or not desc.strip():
        out.append(Check("description is one sentence", False, "the description is missing"))
    else:
        desc = " ".join(desc.split())
        if not _END.search(desc):
            out.append(
                Check(
                    "description is one sentence",
                    False,
                    f"the description stops mid-sentence ({desc[-40:]!r} does not end with . ! "
                    "or ?)",
                )
            )
        elif _INNER_END.search(desc):
            out.append(
                Check(
                    "description is one sentence",
                    False,
                    "the description is more than one sentence",
                )
            )
        else:
            out.append(Check("description is one sentence", True))
        if not DESCRIPTION_MIN <= len(desc) <= DESCRIPTION_MAX:
            out.append(
                Check(
                    "description length",
                    False,
                    f"the description has {len(desc)} characters; it must have "
                    f"{DESCRIPTION_MIN} to {DESCRIPTION_MAX}",
                )
            )
        else:
            out.append(Check("description length", True))
        if body is not None:
            run = copied_run(desc, body)
            words = len(_words(desc))
            if run >= COPY_RUN or (words >= 5 and run >= 0.8 * words):
                out.append(
                    Check(
                        "description in its own words",
                        False,
                        f"the description copies {run} words in a row from the page; say what "
                        "the reader learns in your own words",
                    )
                )
            else:
                out.append(Check("description in its own words", True))
            if grounded_min > 0:
                out.append(_grounded(desc, body, grounded_min))
    tags = meta.get("tags")
    if not isinstance(tags, list) or not tags:
        out.append(Check("tags", False, "there is no list of tags"))
    else:
        bad = [t for t in tags if not isinstance(t, str) or len(t) > TAG_MAX or not _TAG.match(t)]
        if bad:
            out.append(
                Check(
                    "tags",
                    False,
                    "tags must be lowercase keywords of a word or two: "
                    + ", ".join(map(repr, bad)),
                )
            )
        elif len(tags) > TAGS_MAX or len(set(tags)) != len(tags):
            out.append(Check("tags", False, f"tags must be 1 to {TAGS_MAX} distinct keywords"))
        else:
            out.append(Check("tags", True))
    if body is not None:
        out.append(
            Check("body kept", True)
            if body.strip()
            else Check("body kept", False, "the document's body is gone")
        )
    return out


def _grounded(description: str, body: str, minimum: float) -> Check:
    found = grounding(description, body)
    if found.share >= minimum:
        return Check(GROUNDED, True)
    missing = ", ".join(repr(w) for w in found.missing[:5])
    return Check(
        GROUNDED,
        False,
        f"the description speaks of what the page does not: {missing} "
        f"{'is' if len(found.missing) == 1 else 'are'} not on the page ({found.share:.0%} of "
        f"its words are, {minimum:.0%} needed); describe this page",
    )


def failed_checks(checks: list[Check]) -> list[str]:
    return [c.why for c in checks if not c.passed]


def split_frontmatter(text: str) -> tuple[dict[str, Any] | None, str]:
    """(frontmatter, body) of a Markdown text; (None, text) when it has none."""
    if not text.startswith("---\n"):
        return None, text
    end = text.find("\n---\n", 4)
    if end < 0:
        return None, text
    try:
        meta = yaml.safe_load(text[4:end])
    except yaml.YAMLError:
        return None, text
    return (meta if isinstance(meta, dict) else None), text[end + 5 :]
