"""The documentation: the README stays short, the site builds with every page in its navigation,
the command line reference is the parsers' own, and the screenshot is the console's."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pantheon.console.cli import build_parser
from pantheon.console.cli_reference import cli_reference

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python -m pantheon.console.cli_reference > docs/reference/cli.md"


def test_the_readme_is_read_in_two_minutes():
    size = (ROOT / "README.md").stat().st_size
    assert size <= 10_240, f"README.md is {size} bytes: move the detail into a docs/ page"


def test_from_the_readme_one_click_reaches_your_repository_and_what_rho_means():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = dict(
        (text, target) for text, target in re.findall(r"\[([^\]]+)\]\(([^)#]+)[^)]*\)", readme)
    )
    missing = [t for t in links.values() if "://" not in t and not (ROOT / t).exists()]
    assert missing == [], f"README links to files that do not exist: {missing}"
    assert links["your own repository"] == "docs/your-repository.md"
    assert links["live metrics: what ρ and κ mean"] == "docs/metrics.md"
    metrics = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert "ρ" in metrics and "utilization" in metrics.lower()


def test_the_command_line_reference_is_the_parsers_own():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert page == cli_reference(), f"docs/reference/cli.md is out of date: run {REGENERATE}"


def test_the_settings_reference_is_the_settings_own():
    from pantheon.console.settings_reference import settings_reference

    page = (ROOT / "docs" / "reference" / "settings.md").read_text(encoding="utf-8")
    assert page == settings_reference(), (
        "docs/reference/settings.md is out of date: run "
        "python -m pantheon.console.settings_reference > docs/reference/settings.md"
    )
    assert "| `kappa_threshold` | float | `0.6` | `--kappa-threshold` |" in page


def test_the_reference_changes_when_a_parser_does():
    parser = build_parser()
    before = cli_reference(parser)
    assert "## `pantheon night`" in before and "`--until HH:MM`" in before
    assert "### `pantheon flows check`" in before, "sub-commands have their own section"
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    stop = commands.choices["stop"]
    stop.add_argument("--gently", action="store_true", help="a new option")
    after = cli_reference(parser)
    assert after != before and "| `--gently` | a new option |" in after


def test_the_screenshots_are_the_consoles_snapshots():
    snapshots = ROOT / "tests" / "__snapshots__"
    pairs = {
        "console.svg": snapshots
        / "test_console_snapshots"
        / "TestDashboard.test_large_terminal.svg",
        "review.svg": snapshots / "test_review_screen" / "test_snapshot_of_the_review_screen.svg",
    }
    for name, snapshot in pairs.items():
        shown = (ROOT / "docs" / "images" / name).read_bytes()
        assert shown == snapshot.read_bytes(), f"docs/images/{name}: copy {snapshot} again"


def test_the_site_builds_strict(tmp_path):
    """A broken link, a missing anchor or a page left out of the navigation fails the build."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed here (pip install '.[docs]'); .ci/run installs it")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
