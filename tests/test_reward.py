"""Verifiable 0/1 rewards: answer extraction, normalisation and matching."""

from __future__ import annotations

import pytest

from layerpolicy.bupo.reward import answers_match, extract_answer, math_reward, normalise_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\left\{1, 2\right\}}", r"\left\{1, 2\right\}"),
        (r"first \boxed{3}, then corrected: \boxed{4}", "4"),
        (r"\fbox{7} and nothing else", "7"),
        (r"\boxed 42$ done", "42"),
        (r"put it in \boxed{} ... I get \boxed{}", None),
        (r"answer \boxed{5} then an empty \boxed{}", "5"),
        ("12 + 7 = 19, so 19 apples.", "19"),
        ("The temperature drops to -3.", "-3"),
        ("5-3 equals 2", "2"),
        ("total 1,250 dollars", "1,250"),
        ("half is 1/2", "1/2"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("3", "3"),
        ("3.0", "3"),
        (" $3$ ", "3"),
        ("3.", "3"),
        ("-7", "-7"),
        ("+7", "7"),
        ("0.5", "1/2"),
        ("1/2", "1/2"),
        (r"\frac{1}{2}", "1/2"),
        (r"\dfrac12", "1/2"),
        (r"\tfrac{3}{6}", "1/2"),
        (r"-\frac{1}{2}", "-1/2"),
        (r"\frac{-1}{2}", "-1/2"),
        ("1,000", "1000"),
        (r"1{,}000", "1000"),
        (r"1\!000", "1000"),
        (r"50\%", "50"),
        ("50%", "50"),
        (r"90^\circ", "90"),
        (r"\text{Monday}", "Monday"),
        (r"\textbf{(C)}", "(C)"),
        ("x = 3", "3"),
        ("x_1 = 4", "4"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\frac\pi2", r"\frac{\pi}{2}"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"\rightarrow", r"\rightarrow"),
        ("(1,2)", "(1,2)"),
        ("1/0", "1/0"),
    ],
)
def test_normalise_answer(answer: str, expected: str) -> None:
    assert normalise_answer(answer) == expected


@pytest.mark.parametrize(
    ("response", "truth", "reward"),
    [
        (r"... so \boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac12", 1.0),
        (r"\boxed{\dfrac{1}{2}}", "1/2", 1.0),
        (r"\boxed{1} wait, no: \boxed{2}", "2", 1.0),
        (r"\boxed{1} wait, no: \boxed{2}", "1", 0.0),
        ("I think it is 19.", "19", 1.0),
        ("I think it is 19, not 20.", "19", 0.0),
        (r"\boxed{-4}", "-4", 1.0),
        (r"\boxed{4}", "-4", 0.0),
        (r"\boxed{x = 3}", "3", 1.0),
        (r"\boxed{3}", "x=3", 1.0),
        (r"\boxed{3.0}", "3", 1.0),
        (r"\boxed{25\%}", "25", 1.0),
        (r"\boxed{25\%}", "0.25", 0.0),
        (r"\boxed{\text{Yes}}", "Yes", 1.0),
        (r"\boxed{No}", "Yes", 0.0),
        (r"\boxed{\$1,000}", "1000", 1.0),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
        (r"\boxed{\infty}", r"\infty", 1.0),
        ("", "3", 0.0),
        ("no answer at all", "3", 0.0),
        (r"\boxed{}", "", 0.0),
    ],
)
def test_math_reward(response: str, truth: str, reward: float) -> None:
    assert math_reward(response, truth) == reward


def test_answers_match_needs_a_prediction() -> None:
    assert not answers_match(None, "3")
    assert answers_match("3", "3")


def test_the_trainer_reward_scores_text_and_chat_completions() -> None:
    from layerpolicy.bupo.data import reward_function

    reward = reward_function(math_reward)
    completions = [[{"role": "assistant", "content": r"so \boxed{3}"}], "it is 5", r"\boxed{x=2}"]
    assert reward(completions=completions, answer=["3", "4", "2"], prompt_id=["a", "b", "c"]) == [
        1.0,
        0.0,
        1.0,
    ]
    assert reward.__name__ == "math_reward"  # TRL names the logged reward after it
