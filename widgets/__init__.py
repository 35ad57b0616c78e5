"""Reusable Textual widgets of the Pantheon console, one per module."""
