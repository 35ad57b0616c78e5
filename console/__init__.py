"""The ``pantheon`` command line and the Textual console."""
