"""``pantheon docs``: where the documentation is, and how to read it offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SITE = "https://www.mkdocs.org/"


def add_docs(sub: Any) -> None:
    sub.add_parser(
        "docs",
        help="where the documentation is, and how to read it offline",
        description="Say where the documentation site's pages are (docs/ in the source tree, "
        "a MkDocs site) and how to build and read it offline.",
    )


def source_tree() -> Path | None:
    """The source tree this install came from, when it has the documentation (an editable
    install or a checkout); None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "mkdocs.yml").is_file() and (root / "docs").is_dir() else None


def cmd_docs(args: argparse.Namespace) -> int:
    root = source_tree()
    if root is None:
        print(
            "This install has no copy of the documentation: it is the docs/ folder of "
            "Pantheon's source tree (a MkDocs site). In a checkout of it:"
        )
        where = "the checkout"
    else:
        print(f"The documentation: {root / 'docs'} (start at index.md), a MkDocs site.")
        where = str(root)
    print(
        f"To read it offline, in {where}:\n"
        "  pip install '.[docs]'\n"
        "  mkdocs serve            # http://127.0.0.1:8000, rebuilt as you edit\n"
        "  mkdocs build            # or a static copy in site/: open site/index.html\n"
        "Each page is Markdown, readable as it is: getting-started.md, your-repository.md, "
        "console.md, metrics.md, reference/cli.md."
    )
    return 0
