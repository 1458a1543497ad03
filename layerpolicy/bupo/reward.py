"""Verifiable 0/1 rewards for BuPO/GRPO training, screening and the reward evaluation.

The policy is the paper's scorer (verl's math scoring): only the LAST \\boxed{...} (or \\fbox{...})
of a response counts, and a response without one, or whose last box is empty or never closes,
scores 0. A truncated response (cut at the token budget) is graded the same way, so it scores 0
unless a box it finished is its last. Whether the boxed answer equals the ground truth is decided
by math-verify (the verifier TRL's `accuracy_reward` uses): both are parsed to SymPy and compared,
so "\\sqrt{12}" = "2\\sqrt{3}", "\\frac12" = "0.5", "10^3" = "1000", "5 \\text{ cm}" = "5", sets
and intervals compare as sets and intervals, and "x = 3" = "3".
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import version
from typing import Any

from math_verify import LatexExtractionConfig, parse, verify

RewardFn = Callable[[str, str], float]

POLICY = (
    "only the last \\boxed{} (or \\fbox{}) of the response counts; a response without one, or "
    "whose last box is empty or unclosed, scores 0; a truncated response is graded the same way "
    "(usually no final box: 0) and is not masked from the loss"
)
TIMEOUT_SECONDS = 5  # per parse and per comparison; signal-based, so main thread only
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),)


def last_boxed(response: str) -> str | None:
    """The content of the response's last \\boxed / \\fbox, or None when there is none, it is
    empty or its braces never close. Braces are balanced ("\\boxed{\\frac{1}{2}}" gives
    "\\frac{1}{2}"); an unbraced "\\boxed 42" gives "42" (up to the next space or "$").
    """
    starts = [match.end() for match in _BOX.finditer(response)]
    if not starts:
        return None
    rest = response[starts[-1] :]
    if not rest.lstrip(" ").startswith("{"):
        match = re.match(r" *([^\s${}]+)", rest)
        return match.group(1) if match else None
    opening = rest.index("{")
    depth = 0
    for index in range(opening, len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[index], 0)
        if depth == 0:
            return rest[opening + 1 : index].strip() or None
    return None


def grade(response: str, answer: str) -> bool:
    """True when the response's last boxed answer is math-verify equivalent to `answer`."""
    boxed = last_boxed(response)
    if boxed is None:
        return False
    timeout = _timeout()
    gold = _parse_boxed(answer, timeout)
    if not gold:
        return False
    predicted = _parse_boxed(boxed, timeout)
    return bool(predicted) and verify(gold, predicted, timeout_seconds=timeout)


def math_reward(response: str, truth: str) -> float:
    """1.0 when `grade(response, truth)`, else 0.0 (training, screen and evaluation)."""
    return 1.0 if grade(response, truth) else 0.0


def verifier_record() -> dict[str, Any]:
    """The grader for run.json: the verifier, its version, the extraction policy and timeouts."""
    return {
        "name": "math-verify",
        "version": version("math-verify"),
        "policy": POLICY,
        "timeout_seconds": TIMEOUT_SECONDS,
    }


@lru_cache(maxsize=4096)
def _parse_boxed(text: str, timeout: int | None) -> list:
    """math-verify's parse of `text` as one boxed LaTeX answer ([] when it does not parse)."""
    return parse("\\boxed{" + text + "}", extraction_config=_EXTRACTION, parsing_timeout=timeout)


def _timeout() -> int | None:
    """math-verify's alarm-based timeout works only in the main thread: off elsewhere
    (as in TRL's `accuracy_reward`), with its "timeout disabled" warnings silenced."""
    if threading.current_thread() is threading.main_thread():
        return TIMEOUT_SECONDS
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return None
