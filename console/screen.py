"""The console's base screen: what every full screen of the console shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen

if TYPE_CHECKING:
    from .app import PantheonConsole

__all__ = ["ConsoleScreen"]


class ConsoleScreen(Screen[None]):
    """A full screen of the console (dashboard, run detail, review, training)."""

    @property
    def console(self) -> PantheonConsole:
        """The console app, typed."""
        return self.app  # type: ignore[return-value]
