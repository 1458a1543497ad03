"""Shared pieces of the training tests: fast settings, a reward tiny models can earn, and the
one-line CLI error check."""

from __future__ import annotations

from layerpolicy.cli.app import main

FAST = dict(group_size=2, prompts_per_step=2, mini_batches=2, max_new_tokens=6, seed=0)
K = 2


def parity_reward(response: str, truth: str) -> float:
    """A reward random models can earn: odd-length responses win (groups get mixed rewards)."""
    return float(len(response) % 2)


def one_line_error(capsys, argv: list[str], expected: str, *, after_work: bool = False) -> None:
    """Exit code 2 and the error as one line (the only stderr line, unless `after_work`: then
    the last one, after the progress output of the work done first)."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert "Traceback" not in err and lines[-1].startswith("error:"), err
    assert expected in lines[-1] and (after_work or len(lines) == 1), err
