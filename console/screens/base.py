"""The console's base screen: what every full screen of the console shares."""

from __future__ import annotations

from typing import cast

from textual.screen import Screen

from pantheon.console.messages import ConsoleApp

__all__ = ["ConsoleScreen"]


class ConsoleScreen(Screen[None]):
    """A full screen of the console (dashboard, run detail, review, training)."""

    @property
    def console(self) -> ConsoleApp:
        """The console app, as the screens use it."""
        return cast(ConsoleApp, self.app)
