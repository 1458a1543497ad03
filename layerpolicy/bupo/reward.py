"""Verifiable 0/1 rewards for BuPO/GRPO training: extract the final answer and compare it exactly.

Normalisation choices (both sides get the same treatment):
- a leading single-variable assignment is dropped: "x = 3" and "\\boxed{x = 3}" both mean "3";
- percent and degree signs are dropped: "50\\%" equals "50" (but not "0.5");
- numbers compare exactly as fractions: "0.5", "1/2", "\\frac{1}{2}", "\\dfrac12" are all "1/2",
  "3.0" is "3"; non-numeric answers compare as normalised LaTeX strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

RewardFn = Callable[[str, str], float]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_WRAPPER_COMMANDS = ("boxed", "fbox", "text", "textbf", "textrm", "mathrm", "mathbf", "mbox")
_NUMBER = re.compile(r"(?:(?<![\w)\]])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRACTION_TEXT = re.compile(r"([+-]?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?=")
_NOISE = re.compile(r"\\?\$|\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\[!,;: ]|\^\{?\\circ\}?|\\?%")


def extract_answer(text: str) -> str | None:
    """The content of the last non-empty \\boxed{...} (or \\fbox), else the last number, else None.

    Braces are balanced, so "\\boxed{\\frac{1}{2}}" gives "\\frac{1}{2}"; an unbraced "\\boxed 42"
    gives "42" (up to the next space or "$").
    """
    for start in sorted(_box_starts(text), reverse=True):
        content = _box_content(text, start)
        if content:
            return content
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalise_answer(answer: str) -> str:
    """A canonical string for comparing answers (see the module docstring for the rules)."""
    text = _unwrap_commands(answer, _WRAPPER_COMMANDS)
    text = _NOISE.sub("", text)
    text = re.sub(r"\s+", "", text).replace("{,}", ",")
    text = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", text)
    text = _brace_arguments(text, "\\frac", 2)
    text = _brace_arguments(text, "\\sqrt", 1)
    text = text.rstrip(".")
    if _ASSIGNMENT.match(text) and text.count("=") == 1:
        text = text.split("=", 1)[1]
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    number = _as_fraction(text)
    return text if number is None else str(number)


def answers_match(predicted: str | None, truth: str) -> bool:
    """True when both answers normalise to the same non-empty string."""
    if predicted is None:
        return False
    expected = normalise_answer(truth)
    return bool(expected) and normalise_answer(predicted) == expected


def math_reward(response: str, truth: str) -> float:
    """1.0 when the response's final answer matches `truth`, else 0.0."""
    return 1.0 if answers_match(extract_answer(response), truth) else 0.0


def _box_starts(text: str) -> list[int]:
    """Indexes just after each \\boxed / \\fbox command (not \\boxedfoo)."""
    starts = []
    for command in _BOX_COMMANDS:
        for match in re.finditer(re.escape(command) + r"(?![A-Za-z])", text):
            starts.append(match.end())
    return starts


def _box_content(text: str, index: int) -> str | None:
    rest = text[index:]
    if rest.lstrip(" ").startswith("{"):
        argument = _read_argument(text, index)
        return argument[0].strip() if argument else None
    match = re.match(r"\s*([^\s${}]+)", rest)
    return match.group(1) if match else None


def _read_argument(text: str, index: int) -> tuple[str, int] | None:
    """One LaTeX argument at `index` (spaces skipped): a balanced {group} or a single character.

    Returns (content, index after it), or None when there is no argument or braces do not close.
    """
    while index < len(text) and text[index] == " ":
        index += 1
    if index >= len(text):
        return None
    if text[index] != "{":
        if text[index] == "\\":
            match = re.match(r"\\[A-Za-z]+", text[index:])
            if match:
                return match.group(), index + match.end()
        return text[index], index + 1
    depth = 0
    for end in range(index, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[index + 1 : end], end + 1
    return None


def _unwrap_commands(text: str, commands: tuple[str, ...]) -> str:
    """Replace each \\command{arg} (for the given commands) by its argument, innermost included."""
    pattern = re.compile(r"\\(?:" + "|".join(commands) + r")(?![A-Za-z])")
    while match := pattern.search(text):
        argument = _read_argument(text, match.end())
        if argument is None or not text[match.end() :].lstrip(" ").startswith("{"):
            return text[: match.start()] + text[match.end() :]
        content, end = argument
        text = text[: match.start()] + content + text[end:]
    return text


def _brace_arguments(text: str, command: str, count: int) -> str:
    """Rewrite `command` arguments in braces: "\\frac12" and "\\frac{1}{2}" become the same."""
    out, index = [], 0
    while (found := text.find(command, index)) >= 0:
        out.append(text[index:found] + command)
        index = found + len(command)
        if index < len(text) and text[index].isalpha():
            continue
        for _ in range(count):
            argument = _read_argument(text, index)
            if argument is None:
                break
            content, index = argument
            out.append("{" + _brace_arguments(content, command, count) + "}")
    out.append(text[index:])
    return "".join(out)


def _as_fraction(text: str) -> Fraction | None:
    """The exact value of an integer, decimal, a/b or \\frac{a}{b} (numbers a, b), else None."""
    if _PLAIN_NUMBER.fullmatch(text):
        return Fraction(text)
    match = re.fullmatch(r"([+-]?)(.+)/(.+)", text) or _FRACTION_TEXT.fullmatch(text)
    if match is None:
        return None
    sign, numerator, denominator = match.groups()
    if not (_PLAIN_NUMBER.fullmatch(numerator) and _PLAIN_NUMBER.fullmatch(denominator)):
        return None
    if Fraction(denominator) == 0:
        return None
    value = Fraction(numerator) / Fraction(denominator)
    return -value if sign == "-" else value
