"""What every ``farm`` command module shares, whichever layer it belongs to: the two consoles
and the one way a command reports an error and exits."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)


def error(message: str) -> None:
    """Print ``error: MESSAGE`` on stderr; the message is plain text, never rich markup."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print the error and return the exit to raise (``raise fail(...) from None``)."""
    error(message)
    return typer.Exit(code)


def needs_extra(extra: str, exc: ImportError) -> typer.Exit:
    """The exit of a command whose extra (``tinyfarm[EXTRA]``) is not installed."""
    return fail(f"this command needs the {extra} extra (pip install 'tinyfarm[{extra}]'): {exc}")
