"""The ``pantheon`` commands, one module per group: each adds its subcommands to the parser
(``add_*``) and runs them (``cmd_*``); :mod:`pantheon.console.cli` puts them together.

Only the commands that draw import Textual, and only when they run.
"""
