"""The grounding score: a description must speak of its own page, on the shipped corpus's real
pages."""

from __future__ import annotations

from pathlib import Path

import yaml

from pantheon.core.work.grounding import GROUNDED_MIN, grounding

CORPUS = Path(__file__).resolve().parent.parent / "flows" / "corpus"
REFERENCE = yaml.safe_load((CORPUS / "docs_reference.yaml").read_text(encoding="utf-8"))


def page(name: str) -> str:
    return (CORPUS / "docs" / name).read_text(encoding="utf-8")


def test_every_right_description_of_the_corpus_speaks_of_its_page():
    for name, meta in REFERENCE.items():
        g = grounding(meta["description"], page(name))
        assert g.grounded, f"{name}: {g}"


def test_another_pages_description_names_what_the_page_does_not_have():
    backups = REFERENCE["backups.md"]["description"]
    g = grounding(backups, page("configuration.md"))
    assert not g.grounded and g.share < GROUNDED_MIN
    assert "backup" in g.missing and "restore" in g.missing
    assert "store" not in g.missing  # a word of the page is never named
    # a page that shares more of its words (transactions, stores, copies): under the old 0.5,
    # over the threshold a writer's right paraphrases need
    near = grounding(backups, page("transactions.md"))
    assert 0.35 <= near.share < 0.5 and near.grounded


def test_a_claim_the_page_does_not_make_fails_and_stems_match_across_forms():
    text = page("transactions.md")
    assert grounding("Explains how transactions group writes and roll back.", text).grounded
    # "grouped" and "writing" are the page's "group" and "writes" by their stems
    assert grounding("Shows how writing is grouped into transactions.", text).share == 1.0
    wrong = grounding("Explains how to replicate a store to a remote server over TLS.", text)
    assert not wrong.grounded and {"replicate", "remote", "tls"} <= set(wrong.missing)


def test_a_description_of_common_words_only_is_not_failed_by_this_check():
    g = grounding("Shows how to use it.", "anything")
    assert (g.share, g.words, g.missing) == (1.0, 0, ())


def test_a_terse_reference_page_grounds_a_right_description_in_longer_words():
    # a writer's reply on the demo corpus: the page says "sync='batch', cache_mb=64"
    text = (CORPUS / "repo" / "docs" / "api-open.md").read_text(encoding="utf-8")
    said = (
        "Explains how to open a store file using the kvlite library, including parameters "
        "such as path, synchronization mode, cache size, and read-only status."
    )
    g = grounding(said, text)
    assert g.grounded and "synchronization" not in g.missing and "cache" not in g.missing
