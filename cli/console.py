"""The command line's two consoles: results on stdout, notes, warnings and errors on stderr."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def note(message: str) -> None:
    """One yellow `note:` line on stdout."""
    console.print(f"[yellow]note:[/] {message}", highlight=False)
