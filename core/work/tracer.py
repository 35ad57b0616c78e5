"""The pytest plugin a traced test run loads: each test's outcome, and the lines it ran.

This file is never imported by Pantheon itself: :mod:`pantheon.core.work.suite` copies it
beside a link to coverage.py into a folder of its own, puts that folder on the tests'
``PYTHONPATH`` and loads it with ``-p pantheon_tracer``, inside the repository's own
interpreter and sandbox; importing it does nothing. It reads three variables:

- ``PANTHEON_TRACE_OUT``: the folder it writes to (``outcomes.jsonl``, one line a test phase or
  collection error, flushed as it goes, so a run killed at its time limit keeps what it ran;
  ``coverage`` the coverage.py data file; ``tracer.json`` how the tracing went);
- ``PANTHEON_TRACE_SOURCE``: the repository to measure (unset: outcomes only);
- ``PANTHEON_TRACE_SAVE_S``: how often the coverage data is saved while tests run.

Coverage runs from the moment pytest loads the plugin (before conftest files and test modules
are imported) and each test's setup, call and teardown run under a context named by its node
id (coverage.py's ``switch_context``), so every line is known with the tests that ran it.
"""

import contextlib
import json
import os
import time

import pytest

_state = {"coverage": None, "why": None, "saved": time.monotonic(), "log": None, "out": "."}


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Start before the conftest files and the test modules are imported."""
    out = _state["out"] = os.environ.get("PANTHEON_TRACE_OUT", ".")
    _state["log"] = open(os.path.join(out, "outcomes.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
    source = os.environ.get("PANTHEON_TRACE_SOURCE")
    if not source:
        return
    try:
        import coverage

        cov = coverage.Coverage(
            data_file=os.path.join(out, "coverage"),
            source=[source],
            config_file=False,
            auto_data=False,
        )
        # a suite with no test, or a package no test imports, is no news to tell the operator
        cov.set_option(
            "run:disable_warnings",
            ["no-data-collected", "module-not-measured", "module-not-imported"],
        )
        cov.start()
        _state["coverage"] = cov
    except Exception as exc:  # coverage missing or refused: outcomes only, and why
        _state["why"] = f"coverage.py could not start: {type(exc).__name__}: {exc}"


def _write(row):
    log = _state["log"]
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()


def _save():
    cov = _state["coverage"]
    if cov is not None:
        try:
            cov.save()
        except Exception as exc:
            _state["why"] = f"coverage.py could not save: {type(exc).__name__}: {exc}"
            _state["coverage"] = None
    _state["saved"] = time.monotonic()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    cov = _state["coverage"]
    if cov is not None:
        cov.switch_context(item.nodeid)


def pytest_runtest_logreport(report):
    text = ""
    if report.failed:
        text = report.longreprtext[-6000:]
    _write(
        {
            "test": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "xfail": bool(getattr(report, "wasxfail", None) is not None),
            "text": text,
        }
    )
    every = float(os.environ.get("PANTHEON_TRACE_SAVE_S", "10"))
    if report.when == "teardown" and time.monotonic() - _state["saved"] > every:
        _save()


def pytest_collectreport(report):
    if report.failed:
        _write(
            {
                "test": report.nodeid,
                "when": "collect",
                "outcome": "failed",
                "xfail": False,
                "text": report.longreprtext[-6000:],
            }
        )


def pytest_unconfigure(config):
    cov = _state["coverage"]
    if cov is not None:
        with contextlib.suppress(Exception):
            cov.stop()
    _save()
    with open(os.path.join(_state["out"], "tracer.json"), "w", encoding="utf-8") as f:
        json.dump({"coverage": _state["coverage"] is not None, "why": _state["why"]}, f)
    if _state["log"] is not None:
        _state["log"].close()
