"""The reviewer's prompt and reply: what both reviewers share first, the test result shown, a
checklist fitted to the flow, the reasons before the verdict."""

from __future__ import annotations

from pantheon.core.agents.review import REVIEW_CHECKLISTS, ReviewPeer, review_messages

DIFF = "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-    return a - b\n+    return a + b\n"


def test_both_reviewers_share_the_start_of_their_prompt_and_differ_only_at_the_end():
    given = ReviewPeer.Input(
        task="Fix add()", kind="code", test_passed=True, test_report=["1 passed in 0.01s"]
    )
    a = review_messages(given, DIFF, "Judge whether the change fixes the function correctly.")
    b = review_messages(given, DIFF, "Judge only whether the change stays small.")
    assert a[0] == b[0], "one system prompt for every reviewer"
    ua, ub = a[1]["content"], b[1]["content"]
    shared = ua.index("Judge")
    assert ua[:shared] == ub[:shared]
    assert "Task: Fix add()" in ua[:shared] and DIFF in ua[:shared]
    assert "The tests passed." in ua[:shared] and "1 passed in 0.01s" in ua[:shared]
    for question in REVIEW_CHECKLISTS["code"]:
        assert question in ua[shared:]


def test_a_failed_test_is_shown_with_its_output_and_docs_get_their_own_checklist():
    failed = ReviewPeer.Input(
        task="t", kind="code", test_passed=False, test_output="E   assert 5 == 4\n1 failed"
    )
    text = review_messages(failed, DIFF, "Judge.")[1]["content"]
    assert "The tests FAILED." in text and "assert 5 == 4" in text
    docs = ReviewPeer.Input(task="frontmatter", kind="docs", test_passed=True)
    text = review_messages(docs, DIFF, "Judge.")[1]["content"]
    assert REVIEW_CHECKLISTS["docs"][1] in text and REVIEW_CHECKLISTS["code"][0] not in text


def test_the_reply_gives_its_reasons_before_its_verdict_and_they_stay_short():
    assert list(ReviewPeer.Verdict.model_json_schema()["properties"]) == ["reasons", "passed"]
    ok = ReviewPeer.Verdict(reasons=["It fixes the sum."], passed=True)
    assert ReviewPeer.problems(ok) == []
    assert ReviewPeer.problems(ReviewPeer.Verdict(reasons=[], passed=True))
    assert ReviewPeer.problems(ReviewPeer.Verdict(reasons=["x" * 400], passed=False))


def test_a_docs_reviewer_reads_the_page_and_each_kind_gets_its_red_flags():
    from pantheon.core.agents.review import REVIEW_RED_FLAGS

    docs = ReviewPeer.Input(task="frontmatter", kind="docs", test_passed=True)
    page = "# Backups\n\nHow to copy a live store.\n"
    text = review_messages(docs, DIFF, "Judge.", page=page)[1]["content"]
    assert "The page (its beginning):" in text and "How to copy a live store." in text
    assert text.index("How to copy") < text.index("Judge."), "the page is in the shared part"
    assert REVIEW_RED_FLAGS["docs"] in text and REVIEW_RED_FLAGS["code"] not in text
    code = ReviewPeer.Input(task="fix", kind="code", test_passed=True)
    text = review_messages(code, DIFF, "Judge.")[1]["content"]
    assert "return fixed results instead of fixing the logic" in text and "The page" not in text
    assert "edits a test file" not in text, "the test gate checked that: it is not asked again"
    untested = ReviewPeer.Input(task="fix", kind="code", test_passed=False)
    assert "edits a test file" in review_messages(untested, DIFF, "Judge.")[1]["content"]


def test_a_docs_reviewer_is_asked_whether_the_frontmatter_speaks_of_the_pages_heading():
    docs = ReviewPeer.Input(task="frontmatter", kind="docs", test_passed=True)
    text = review_messages(docs, DIFF, "Judge.", page="# Backups\n\nCopy a store.\n")[1]["content"]
    assert "1. The page's heading is 'Backups'." in text
    assert "2. " + REVIEW_CHECKLISTS["docs"][0] in text


def test_a_code_reviewer_is_shown_the_gates_note_on_fixed_answers_and_not_asked_what_it_checked():
    from pantheon.core.work.hardcode import hard_coded, verdict

    before = "def clamp(x, lo, hi):\n    return max(hi, min(lo, x))\n"
    after = "def clamp(x, lo, hi):\n    if (x, lo, hi) == (6, 0, 10):\n        return 5\n"
    after += "    return max(lo, min(hi, x))\n"
    ok, note = verdict(hard_coded(before, after, "assert clamp(5, 0, 10) == 5\n"))
    assert ok is True, "one branch no test tries: the reviewers' to judge"
    given = ReviewPeer.Input(
        task="fix clamp", kind="code", test_passed=True, test_report=[note, "1 passed in 0.01s"]
    )
    text = review_messages(given, DIFF, "Judge.")[1]["content"]
    assert "line 2: `if (x, lo, hi) == (6, 0, 10): return 5`" in text[: text.index("Judge.")]
    checklist = " ".join(REVIEW_CHECKLISTS["code"])
    assert "Do the tests pass" not in checklist, "the gate answers that, not the model"
    assert "particular argument values with fixed results" in checklist
