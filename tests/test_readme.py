"""The README cannot rot: its commands parse against the real CLI and its links exist.

Every `layerpolicy ...` line in a fenced code block is parsed by the click command behind
`layerpolicy` (options, types and arguments checked, nothing run). The set-up commands of the first
code block are run by CI itself (`make test`).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import typer.core
from layerpolicy.cli.app import app

README = Path(__file__).parent.parent / "README.md"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SOURCE = re.compile(r"<(?:img|a)\s[^>]*(?:src|href)=\"([^\"]+)\"")
EXTERNAL = ("http://", "https://", "mailto:", "#")


def code_blocks(text: str) -> list[str]:
    """The contents of every fenced code block, in order."""
    return FENCE.findall(text)


def commands(text: str) -> list[list[str]]:
    """Every `layerpolicy ...` command of the code blocks as argv (continuations joined, comments
    dropped)."""
    found = []
    for block in code_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("layerpolicy "):
                found.append(shlex.split(line, comments=True))
    return found


def links(text: str) -> list[str]:
    """Relative link and image targets outside code blocks, without #anchors."""
    prose = FENCE.sub("", text)
    targets = LINK.findall(prose) + HTML_SOURCE.findall(prose)
    return sorted({t.split("#")[0] for t in targets if not t.startswith(EXTERNAL)})


def parse(argv: list[str]) -> typer.Context:
    """Resolve subcommands and parse the rest as click would, without invoking anything.

    Raises typer.TyperException (click's usage errors) for unknown commands or options and bad
    values.
    """
    command = typer.main.get_command(app)
    name, ctx = "layerpolicy", None
    while isinstance(command, typer.core.TyperGroup) and argv:
        ctx = typer.Context(command, info_name=name, parent=ctx)
        name, sub, argv = command.resolve_command(ctx, argv)
        assert sub is not None
        command = sub
    return command.make_context(name, list(argv), parent=ctx)


TEXT = README.read_text()
COMMANDS = commands(TEXT)


def test_first_block_is_the_set_up():
    first = code_blocks(TEXT)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]


def test_readme_shows_commands():
    assert len(COMMANDS) >= 5
    assert {argv[1] for argv in COMMANDS} >= {"entropy", "compare", "train", "models"}


@pytest.mark.parametrize("argv", COMMANDS, ids=shlex.join)
def test_command_parses(argv):
    try:
        ctx = parse(argv[1:])
    except typer.TyperException as error:
        pytest.fail(f"README command does not parse: {shlex.join(argv)}\n{error}")
    assert ctx.command.name is not None


def test_parse_rejects_unknown_options():
    with pytest.raises(typer.TyperException, match="No such option"):
        parse(["entropy", "--no-such-option"])
    with pytest.raises(typer.TyperException, match="No such command"):
        parse(["no-such-command"])
    with pytest.raises(typer.TyperException, match="greater than or equal to 1"):
        parse(["entropy", "--limit", "0"])


@pytest.mark.parametrize("target", links(TEXT))
def test_link_exists(target):
    assert (README.parent / target).exists(), f"README links to missing {target}"


def test_readme_shows_figures():
    assert any(t.startswith("figures/") and t.endswith(".png") for t in links(TEXT))
