"""Verifiable 0/1 rewards: the last-box policy and math-verify equivalence."""

from __future__ import annotations

import re
import threading
from importlib.metadata import distribution

import pytest

from layerpolicy.bupo.reward import grade, last_boxed, math_reward, verifier_record


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\left\{1, 2\right\}}", r"\left\{1, 2\right\}"),
        (r"first \boxed{3}, then corrected: \boxed{4}", "4"),
        (r"\fbox{7} and nothing else", "7"),
        (r"\boxed{3} then \fbox{8}", "8"),
        (r"\boxed 42$ done", "42"),
        (r"\boxed{ 5 }", "5"),
        (r"\boxedfoo{5}", None),
        (r"put it in \boxed{} ... I get \boxed{}", None),
        (r"answer \boxed{5} then an empty \boxed{}", None),
        (r"cut off at the budget: \boxed{\frac{1}{2", None),
        ("12 + 7 = 19, so 19 apples.", None),
        ("", None),
    ],
)
def test_last_boxed_takes_the_last_box_only(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("response", "truth", "reward"),
    [
        # no final box: 0, whatever the text says (the old last-number fallback credited these)
        ("Step 1: 2+2 = 4, so next we divide by", "4", 0.0),
        ("I think it is 19.", "19", 0.0),
        ("no answer at all", "3", 0.0),
        ("", "3", 0.0),
        # truncated at the token budget: inside the box, or after a box that a later one replaces
        (r"Step 1: 2+2 = 4, so the answer is \boxed{4", "4", 0.0),
        (r"first \boxed{4}, but recheck: the answer is \boxed{", "4", 0.0),
        # truncated after its last box was finished: that box counts
        (r"so \boxed{4}. Let me double-check: 2+2 = 4, and dividing by", "4", 1.0),
        # only the last box counts
        (r"\boxed{1} wait, no: \boxed{2}", "2", 1.0),
        (r"\boxed{1} wait, no: \boxed{2}", "1", 0.0),
        (r"answer \boxed{5} then an empty \boxed{}", "5", 0.0),
        # equivalence is math-verify's
        (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", 1.0),
        (r"\boxed{\sqrt{12}}", r"3\sqrt{2}", 0.0),
        (r"\boxed{5 \text{ cm}}", "5", 1.0),
        (r"\boxed{\frac12}", "0.5", 1.0),
        (r"... so \boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac12", 1.0),
        (r"\boxed{\dfrac{1}{2}}", "1/2", 1.0),
        (r"\boxed{\{1, 2\}}", r"\{2, 1\}", 1.0),
        (r"\boxed{\{1, 2\}}", r"\{1, 3\}", 0.0),
        (r"\boxed{(0, 1]}", "(0, 1]", 1.0),
        (r"\boxed{(0, 1)}", "(0, 1]", 0.0),
        (r"\boxed{[0, 1]}", "(0, 1]", 0.0),
        ("\\boxed{\u22123}", "-3", 1.0),
        ("\\boxed{\u22123}", "3", 0.0),
        (r"\boxed{10^3}", "1000", 1.0),
        (r"\boxed{10^3}", "100", 0.0),
        (r"\boxed{x^2 + 2x + 1}", "(x+1)^2", 1.0),
        (r"\boxed{-4}", "-4", 1.0),
        (r"\boxed{4}", "-4", 0.0),
        (r"\boxed{x = 3}", "3", 1.0),
        (r"\boxed{3}", "x=3", 1.0),
        (r"\boxed{3.0}", "3", 1.0),
        (r"\boxed{3.14}", r"\pi", 0.0),
        (r"\boxed{25\%}", "25", 1.0),
        (r"\boxed{25\%}", "0.25", 1.0),
        (r"\boxed{25\%}", "0.5", 0.0),
        (r"\boxed{90^\circ}", "90", 1.0),
        (r"\boxed{\text{Yes}}", "Yes", 1.0),
        (r"\boxed{No}", "Yes", 0.0),
        (r"\boxed{\textbf{(C)}}", r"\text{(C)}", 1.0),
        (r"\boxed{\$1,000}", "1000", 1.0),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \pi \right)", 0.0),
        (r"\boxed{\infty}", r"\infty", 1.0),
        (r"\boxed 42$ done", "42", 1.0),
        (r"\fbox{7}", "7", 1.0),
        (r"\boxed{3}", "", 0.0),
        (r"\boxed{}", "", 0.0),
    ],
)
def test_math_reward(response: str, truth: str, reward: float) -> None:
    assert math_reward(response, truth) == reward
    assert grade(response, truth) is (reward == 1.0)


def test_grading_works_outside_the_main_thread() -> None:
    """math-verify's alarm-based timeout cannot run in a worker thread; grading still must."""
    verdicts: list[bool] = []
    cases = [(r"\boxed{\sqrt{12}}", r"2\sqrt{3}"), (r"\boxed{\sqrt{12}}", "3")]
    worker = threading.Thread(target=lambda: verdicts.extend(grade(r, t) for r, t in cases))
    worker.start()
    worker.join()
    assert verdicts == [True, False]


def test_verifier_record_names_math_verify_and_its_version() -> None:
    record = verifier_record()
    assert record["name"] == "math-verify"
    assert record["version"] == distribution("math_verify").metadata["Version"]
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", record["version"])
    assert "last \\boxed{}" in record["policy"] and "scores 0" in record["policy"]
    assert record["timeout_seconds"] > 0


def test_the_trainer_reward_scores_text_and_chat_completions() -> None:
    from layerpolicy.bupo.data import reward_function

    reward = reward_function(math_reward)
    completions = [[{"role": "assistant", "content": r"so \boxed{3}"}], "it is 4", r"\boxed{x=2}"]
    assert reward(completions=completions, answer=["3", "4", "2"], prompt_id=["a", "b", "c"]) == [
        1.0,
        0.0,
        1.0,
    ]
    assert reward.__name__ == "math_reward"  # TRL names the logged reward after it
