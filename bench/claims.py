"""Does a description speak of its page? The grounding check's AUROC, and what its threshold
does, on right descriptions against two kinds of wrong ones: another page's (right for that
page), and one that claims what the page never covers.

Two sets, each figure says which:

- **tune**: the project's own demo corpus (``flows/corpus/docs``, its hand-written reference
  frontmatter), where :data:`~pantheon.core.work.grounding.GROUNDED_MIN` was chosen; another
  page's description only (the corpus has no wrong-claim set);
- **click**: real pages it was never tuned on, click 8.1.7's ``docs/`` (from its PyPI sdist,
  downloaded once), with right and wrong-claim descriptions written by hand from each page
  (``bench/data/click_docs.yaml``).

Another page's description is that of the page three further on in name order.

    python bench/claims.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from pantheon.core.observe.quality import quality
from pantheon.core.work.grounding import GROUNDED_MIN, grounding
from pantheon.core.work.realbugs import Library, fetch

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "flows" / "corpus"
CLICK = Library("click", "8.1.7", ("docs",))
CACHE = Path.home() / ".cache" / "pantheon" / "realbugs" / "sdists"


def tune_set() -> dict[str, tuple[str, str, str | None]]:
    """page -> (its text, its right description, None: no wrong-claim description)."""
    reference = yaml.safe_load((CORPUS / "docs_reference.yaml").read_text(encoding="utf-8"))
    return {
        name: ((CORPUS / "docs" / name).read_text(encoding="utf-8"), meta["description"], None)
        for name, meta in reference.items()
    }


def click_set(cache: Path) -> dict[str, tuple[str, str, str | None]]:
    docs = fetch(CLICK, cache) / "docs"
    labels = yaml.safe_load((HERE / "data" / "click_docs.yaml").read_text(encoding="utf-8"))
    return {
        name: ((docs / name).read_text(encoding="utf-8"), d["right"], d["lacks"])
        for name, d in labels.items()
    }


def measure(pages: dict[str, tuple[str, str, str | None]]) -> dict[str, object]:
    names = sorted(pages)
    good, other, lacks = [], [], []
    for i, name in enumerate(names):
        text, right, wrong = pages[name]
        good.append(grounding(right, text).share)
        other.append(grounding(pages[names[(i + 3) % len(names)]][1], text).share)
        if wrong is not None:
            lacks.append(grounding(wrong, text).share)
    out: dict[str, object] = {"pages": len(names)}
    for label, bad in (("another page's", other), ("a missing feature", lacks)):
        if not bad:
            continue
        q = quality(good, bad)
        out[label] = {
            "auroc": round(q.auroc, 3),
            "ci95": [round(q.low, 3), round(q.high, 3)],
            "caught": sum(b < GROUNDED_MIN for b in bad),
            "n": len(bad),
        }
    out["right passed"] = sum(g >= GROUNDED_MIN for g in good)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=CACHE, help="where click's sdist is kept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {
        "tune (own corpus)": measure(tune_set()),
        "click 8.1.7": measure(click_set(args.cache)),
    }
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"grounding check, threshold {GROUNDED_MIN}")
    for name, r in results.items():
        print(
            f"{name}: {r['pages']} pages, "
            f"right descriptions passed {r['right passed']}/{r['pages']}"
        )
        for label in ("another page's", "a missing feature"):
            if label in r:
                m = r[label]
                lo, hi = m["ci95"]
                print(
                    f"  {label:18} AUROC {m['auroc']:.2f} (95% CI {lo:.2f}–{hi:.2f}); "
                    f"caught {m['caught']}/{m['n']}"
                )


if __name__ == "__main__":
    main()
