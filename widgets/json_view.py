"""JSON (or plain text), pretty-printed with syntax highlighting, in a scrollable view."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

__all__ = ["JsonView", "render_json"]

MAX_CHARS = 200_000


def render_json(value: Any, *, theme: str = "ansi_dark") -> RenderableType:
    """``value`` as highlighted JSON; a string that is not JSON is shown as text."""
    if isinstance(value, str):
        return Text(value[:MAX_CHARS])
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    syntax = Syntax(
        text[:MAX_CHARS], "json", theme=theme, word_wrap=True, background_color="default"
    )
    if len(text) > MAX_CHARS:
        return Group(syntax, Text(f"… {len(text) - MAX_CHARS} more characters", style="dim"))
    return syntax


class JsonView(VerticalScroll):
    """A scrollable view of one or more titled JSON values."""

    DEFAULT_CSS = """
    JsonView { height: 1fr; }
    JsonView > Static.json--title { text-style: bold; color: $accent; margin-top: 1; }
    JsonView > Static.json--empty { color: $text-muted; }
    JsonView > Static.json--problem { color: $error; }
    """

    plain: str = ""

    def show(
        self,
        parts: list[tuple[str, Any]],
        *,
        empty: str = "nothing here",
        problems: list[str] | None = None,
    ) -> None:
        """Replace the content with these (title, value) parts."""
        theme = "ansi_dark" if self.app.current_theme.dark else "ansi_light"
        widgets: list[Static] = []
        plain: list[str] = list(problems or [])
        for problem in problems or []:
            widgets.append(Static(Text(problem), classes="json--problem"))
        for title, value in parts:
            if title:
                widgets.append(Static(Text(title), classes="json--title"))
            widgets.append(Static(render_json(value, theme=theme)))
            plain += [title, value if isinstance(value, str) else json.dumps(value, indent=2)]
        if not widgets:
            widgets.append(Static(Text(empty), classes="json--empty"))
            plain.append(empty)
        self.plain = "\n".join(plain)
        """What the view shows, as plain text."""
        self.remove_children()
        self.mount_all(widgets)
        self.scroll_home(animate=False)
