"""The built-in prompt set: the project's own generated problems with exact integer answers."""

from __future__ import annotations

import random
from collections.abc import Callable

from .items import SYSTEM_INSTRUCTION, PromptItem

BUILTIN = "builtin"
BUILTIN_DEFAULT_SIZE = 64


def _add(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    return f"What is {a} + {b}?", a + b


def _subtract(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 500), rng.randint(1, 500)
    return f"Compute {a} - {b}.", a - b


def _multiply(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(3, 99), rng.randint(3, 49)
    return f"What is {a} times {b}?", a * b


def _divide(rng: random.Random) -> tuple[str, int]:
    quotient, divisor = rng.randint(2, 60), rng.randint(2, 25)
    return f"What is {quotient * divisor} divided by {divisor}?", quotient


def _expression(rng: random.Random) -> tuple[str, int]:
    a, b, c, d = (rng.randint(2, 20) for _ in range(4))
    return f"Evaluate ({a} + {b}) * {c} - {d}.", (a + b) * c - d


def _equation(rng: random.Random) -> tuple[str, int]:
    x, a, b = rng.randint(-12, 12), rng.randint(2, 9), rng.randint(-30, 30)
    sign = "+" if b >= 0 else "-"
    return f"Solve for x: {a}x {sign} {abs(b)} = {a * x + b}.", x


def _remainder(rng: random.Random) -> tuple[str, int]:
    n, m = rng.randint(50, 999), rng.randint(3, 17)
    return f"What is the remainder when {n} is divided by {m}?", n % m


def _shopping(rng: random.Random) -> tuple[str, int]:
    price, count = rng.randint(2, 15), rng.randint(2, 9)
    paid = (price * count // 10 + 1) * 10
    question = (
        f"A notebook costs {price} dollars. Mia buys {count} notebooks and pays with "
        f"{paid} dollars. How many dollars of change does she get?"
    )
    return question, paid - price * count


def _travel(rng: random.Random) -> tuple[str, int]:
    speed, hours = rng.randint(30, 120), rng.randint(2, 9)
    return f"A train travels at {speed} km per hour for {hours} hours. How many km does it go?", (
        speed * hours
    )


def _apples(rng: random.Random) -> tuple[str, int]:
    start, bags, per_bag = rng.randint(3, 40), rng.randint(2, 6), rng.randint(3, 12)
    given = rng.randint(1, start + bags * per_bag - 1)
    question = (
        f"Sam has {start} apples. He buys {bags} bags with {per_bag} apples each, then gives "
        f"{given} apples to friends. How many apples does Sam have now?"
    )
    return question, start + bags * per_bag - given


def _series(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(5, 60)
    return f"What is the sum of the integers from 1 to {n}?", n * (n + 1) // 2


def _percent(rng: random.Random) -> tuple[str, int]:
    percent, base = rng.choice((10, 20, 25, 50, 75)), rng.randint(1, 40) * 20
    return f"What is {percent}% of {base}?", percent * base // 100


_BUILTIN_KINDS: tuple[Callable[[random.Random], tuple[str, int]], ...] = (
    _add,
    _subtract,
    _multiply,
    _divide,
    _expression,
    _equation,
    _remainder,
    _shopping,
    _travel,
    _apples,
    _series,
    _percent,
)


def builtin_prompts(n: int = BUILTIN_DEFAULT_SIZE, seed: int = 0) -> tuple[PromptItem, ...]:
    """The project's own arithmetic and word problems with exact integer answers.

    Item i depends only on (seed, i), so a larger n extends a smaller one; kinds rotate with i.
    """
    items = []
    for i in range(n):
        rng = random.Random(f"layerpolicy-builtin-{seed}-{i}")
        question, answer = _BUILTIN_KINDS[i % len(_BUILTIN_KINDS)](rng)
        messages = (
            {"role": "system", "content": SYSTEM_INSTRUCTION},
            {"role": "user", "content": question},
        )
        items.append(PromptItem(f"builtin-{i:04d}", messages, None, answer=str(answer)))
    return tuple(items)
