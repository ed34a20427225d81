"""The command line: click commands, one module each.

The only layer that reads argv, prints or exits.  Each command builds its
options, calls one function of the API, and renders human text or --json.
"""

from .main import cli, main

__all__ = ["cli", "main"]
