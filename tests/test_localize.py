"""Failing tests placed on the code they run: a traced suite and spectrum-based localization,
on real git repositories of the layouts users have."""

from __future__ import annotations

import pytest
from helpers import make_repo

from pantheon.core.work.discover import failing_test_jobs
from pantheon.core.work.localize import code_units, rank_suspects
from pantheon.core.work.suite import CoverageMap, run_suite
from pantheon.core.work.testcmd import resolve_test_command

SORTS = """
def bubble(xs):
    xs = list(xs)
    for i in range(len(xs)):
        for j in range(len(xs) - 1 - i):
            if xs[j] > xs[j + 1]:
                xs[j], xs[j + 1] = xs[j + 1], xs[j]
    return xs


def gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def lcm(a, b):
    return a * b // gcd(a, b) + 1   # the bug: a wrong value, no exception
"""


def _jobs(repo):
    found = failing_test_jobs(repo, resolve_test_command(repo))
    return found, {j["test"]: j for j in found.jobs}


def _top(job):
    return (job["suspects"][0]["path"], job["suspects"][0]["name"])


def test_tests_that_put_a_folder_on_sys_path_are_placed_on_the_wrong_value(tmp_path):
    # the layout a user met: programs/<name>.py, tests/test_<name>.py editing sys.path, the
    # failures wrong values raised by no program code (no traceback names the program)
    repo = make_repo(
        tmp_path / "r",
        {
            "programs/mathy.py": SORTS,
            "programs/words.py": "def shout(s):\n    return s.upper() + '!'\n",
            "tests/test_numbers.py": """
                import os, sys
                sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "programs"))
                from mathy import bubble, gcd, lcm

                def test_bubble():
                    assert bubble([3, 1, 2]) == [1, 2, 3]

                def test_gcd():
                    assert gcd(12, 18) == 6

                def test_lcm():
                    assert lcm(4, 6) == 12
                """,
            "tests/test_words.py": """
                import os, sys
                sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "programs"))
                from words import shout

                def test_shout():
                    assert shout("hi") == "HI!"
                """,
        },
    )
    found, jobs = _jobs(repo)
    assert found.traced and found.failed == 1 and found.passed == 3
    job = jobs["tests/test_numbers.py"]
    assert job["path"] == "programs/mathy.py"
    # lcm's line ran only under the failing test; gcd ran under a passing one too
    assert _top(job) == ("programs/mathy.py", "lcm")
    assert job["suspects"][0]["score"] == 1.0
    assert [s["name"] for s in job["suspects"]] == ["lcm", "gcd"]
    # the tests that ran the file and passed guard the change
    assert job["guard"] == []  # test_numbers.py is the job's own test file
    assert not found.unplaced


def test_a_src_package_a_conftest_fixture_and_a_unittest_class(tmp_path):
    repo = make_repo(
        tmp_path / "r",
        {
            "src/shop/__init__.py": "",
            "src/shop/cart.py": """
                class Cart:
                    def __init__(self):
                        self.items = []

                    def add(self, price, qty=1):
                        if qty <= 0:
                            raise ValueError(qty)
                        self.items.append((price, qty))

                    def total(self):
                        return sum(p * q for p, q in self.items)

                    def discount(self, pct):
                        return self.total() * (1 - pct / 10)   # the bug: /10, not /100
                """,
            "src/shop/stock.py": """
                def reserve(stock, n):
                    if n > stock:
                        raise RuntimeError("not enough")
                    return stock - n - 1   # the bug
                """,
            "tests/conftest.py": """
                import sys, pathlib
                sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "src"))
                import pytest
                from shop.stock import reserve

                @pytest.fixture
                def left():
                    left = reserve(10, 3)
                    assert left == 7, left   # a fixture error: the test never runs
                    return left
                """,
            "tests/test_cart.py": """
                import unittest
                from shop.cart import Cart

                class TestCart(unittest.TestCase):
                    def test_total(self):
                        c = Cart()
                        c.add(2.0, 3)
                        self.assertEqual(c.total(), 6.0)

                    def test_discount(self):
                        c = Cart()
                        c.add(100.0)
                        self.assertAlmostEqual(c.discount(10), 90.0)
                """,
            "tests/test_stock.py": """
                def test_left(left):
                    assert left == 7
                """,
        },
    )
    found, jobs = _jobs(repo)
    assert found.traced and found.failed == 2 and found.passed == 1
    assert _top(jobs["tests/test_cart.py"]) == ("src/shop/cart.py", "Cart.discount")
    assert _top(jobs["tests/test_stock.py"]) == ("src/shop/stock.py", "reserve")
    # the passing unittest test ran the cart module: it guards the cart's fix... from its
    # own file, which is the job's; so the guard names no other file here
    assert jobs["tests/test_cart.py"]["guard"] == []


def test_flat_modules_and_a_package_with_tests_beside_it(tmp_path):
    repo = make_repo(
        tmp_path / "r",
        {
            "calc.py": "def half(x):\n    return x / 3\n\n\ndef double(x):\n    return x * 2\n",
            "test_calc.py": "from calc import half\n\ndef test_half():\n    assert half(8) == 4\n",
            "textkit/__init__.py": "",
            "textkit/words.py": (
                "from calc import double\n\n\ndef count(s):\n    return len(s.split())\n\n\n"
                "def twice(s):\n    return double(count(s))\n"
            ),
            "tests/test_words.py": (
                "from textkit.words import count, twice\n\n"
                "def test_count():\n    assert count('a b') == 2\n\n"
                "def test_twice():\n    assert twice('a b c') == 6\n"
            ),
        },
    )
    found, jobs = _jobs(repo)
    assert found.traced and found.failed == 1 and found.passed == 2
    job = jobs["test_calc.py"]
    assert _top(job) == ("calc.py", "half")
    # tests/test_words.py ran calc.py (double) and passed: a change to calc.py must keep it
    assert job["guard"] == ["tests/test_words.py"]


def test_a_suite_past_its_time_limit_gives_what_it_finished(tmp_path):
    repo = make_repo(
        tmp_path / "r",
        {
            "m.py": "def f():\n    return 1\n",
            "test_a.py": "from m import f\n\ndef test_f():\n    assert f() == 2\n",
            "test_b.py": "import time\n\ndef test_slow():\n    time.sleep(60)\n",
        },
    )
    run = run_suite(resolve_test_command(repo), repo, timeout_s=8, cover=True)
    assert run.timed_out
    assert [t.test for t in run.failed] == ["test_a.py::test_f"]
    assert "test_b.py::test_slow" not in run.tests


def test_ochiai_ranks_the_line_only_failing_tests_run(tmp_path):
    cov = CoverageMap(
        {
            "m.py": {
                2: frozenset({"t::fail", "t::pass1", "t::pass2"}),  # shared
                6: frozenset({"t::fail"}),  # only the failing test
                10: frozenset({"t::pass1"}),  # never under the failing test
            }
        }
    )
    (tmp_path / "m.py").write_text(
        "def a():\n    return 1\n\n\ndef b():\n    return 2\n\n\ndef c():\n    return 3\n"
    )
    ranked = rank_suspects(cov, {"t::fail"}, {"t::pass1", "t::pass2"}, repo=tmp_path)
    assert [(s.name, s.score) for s in ranked] == [("b", 1.0), ("a", 0.5774)]
    assert rank_suspects(cov, set(), {"t::pass1"}, repo=tmp_path) == []


def test_code_units_name_methods_and_nested_functions():
    source = (
        "class A:\n    def f(self):\n        def g():\n            pass\n\n"
        "@dec\ndef h():\n    pass\n"
    )
    assert code_units(source) == [("A", 1, 4), ("A.f", 2, 4), ("A.f.g", 3, 4), ("h", 6, 8)]


@pytest.mark.parametrize("command", ["python -m unittest", "make test"])
def test_a_command_that_is_not_pytest_cannot_be_traced(tmp_path, command):
    from pantheon.core.work.suite import UntraceableError
    from pantheon.core.work.testcmd import TestCommand

    with pytest.raises(UntraceableError, match="cannot be traced"):
        run_suite(TestCommand(command, "the job's input", "python"), tmp_path)


def test_a_jobs_suspect_quotes_the_lines_only_its_failing_tests_run(tmp_path):
    from pantheon.core.work.focus import hot_lines_text

    source = (
        "def clamp(x, lo, hi):\n"
        "    if x < lo:\n"
        "        return lo\n"
        "    if x >= hi:\n"
        "        return hi - 1   # the bug: hi is allowed\n"
        "    return x\n"
    )
    repo = make_repo(
        tmp_path / "repo",
        {
            "clamp.py": source,
            "test_clamp.py": (
                "from clamp import clamp\n\n"
                "def test_inside():\n    assert clamp(3, 0, 10) == 3\n\n"
                "def test_below():\n    assert clamp(-1, 0, 10) == 0\n\n"
                "def test_above():\n    assert clamp(12, 0, 10) == 10\n"
            ),
        },
    )
    _, jobs = _jobs(repo)
    top = jobs["test_clamp.py"]["suspects"][0]
    assert (top["name"], list(top["lines"])) == ("clamp", [5])
    hint = hot_lines_text(source, "clamp.py", jobs["test_clamp.py"]["suspects"])
    assert "5 |         return hi - 1" in hint and "return x" not in hint
    # a suspect whose best score many lines share quotes nothing
    many = [{"path": "clamp.py", "name": "clamp", "lines": list(range(1, 7))}]
    assert hot_lines_text(source, "clamp.py", many, most=4) == ""
