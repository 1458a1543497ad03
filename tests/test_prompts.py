"""Prompt loading: builtin, files, hub and named sets; prompt sets and their hashes."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerpolicy.bupo.reward import math_reward
from layerpolicy.errors import OfflineError, PromptSourceError
from layerpolicy.prompts import (
    DATA_ENV,
    SYSTEM_INSTRUCTION,
    PromptItem,
    builtin_prompts,
    load_prompts,
    set_names,
)
from layerpolicy.prompts.records import _as_messages


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


# ----------------------------------------------------------------------------- builtin


def test_builtin_prompts_are_deterministic_and_well_formed() -> None:
    items = builtin_prompts()
    assert len(items) == 64
    assert items == builtin_prompts()
    assert items != builtin_prompts(seed=1)
    assert [item.id for item in items[:2]] == ["builtin-0000", "builtin-0001"]
    assert builtin_prompts(100)[:64] == items
    for item in items:
        system, user = item.messages
        assert system["role"] == "system" and "\\boxed{}" in system["content"]
        assert user["role"] == "user" and user["content"]
        assert item.text is None and item.response is None
        assert int(item.answer) == pytest.approx(float(item.answer))


def test_builtin_prompts_vary_and_are_answerable() -> None:
    items = builtin_prompts(64)
    templates = {" ".join(item.messages[1]["content"].split()[:2]) for item in items}
    assert len(templates) >= 6
    assert len({item.messages[1]["content"] for item in items}) == 64
    assert all(math_reward(f"\\boxed{{{item.answer}}}", item.answer) == 1.0 for item in items)


def test_load_builtin_respects_limit_and_hashes_stably() -> None:
    default = load_prompts()
    assert default.source == "builtin" and len(default.items) == 64
    assert load_prompts("builtin").sha256 == default.sha256
    more = load_prompts(limit=100)
    assert len(more.items) == 100 and more.items[:64] == default.items
    few = load_prompts(limit=5)
    assert few.items == default.items[:5] and few.sha256 != default.sha256


# ----------------------------------------------------------------------------- files


def test_txt_one_prompt_per_non_empty_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("first prompt\n\n  second prompt  \n\n")
    prompts = load_prompts(path)
    assert prompts.source == str(path.resolve())
    assert [(i.id, i.text, i.messages) for i in prompts.items] == [
        ("mine-0", "first prompt", None),
        ("mine-1", "second prompt", None),
    ]


def test_jsonl_detects_columns(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "set.jsonl",
        [
            {"id": "a", "question": "What is 2+2?", "completion": "4", "answer": 4},
            {"id": "b", "question": "What is 3+3?", "completion": "6", "answer": 6.0},
        ],
    )
    items = load_prompts(path).items
    assert items[0] == PromptItem("a", None, "What is 2+2?", response="4", answer="4")
    assert items[1].answer == "6"


def test_messages_ending_with_assistant_become_response(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    items = load_prompts(_write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])).items
    assert items[0].messages == tuple(messages[:2])
    assert items[0].response == "Hello."
    assert items[0].id == "chat-0"


def test_invalid_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(PromptSourceError, match="line 2"):
        load_prompts(path)


def test_json_list_of_objects_strings_or_json_lines(tmp_path: Path) -> None:
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps([{"problem": "P1", "final_answer": "1"}]))
    assert load_prompts(objects).items[0] == PromptItem("objects-0", None, "P1", answer="1")
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps(["one", "two"]))
    assert [i.text for i in load_prompts(strings).items] == ["one", "two"]
    lines = _write_jsonl(tmp_path / "lines.json", [{"prompt": "x"}, {"prompt": "y"}])
    assert [i.text for i in load_prompts(lines).items] == ["x", "y"]


def test_csv_and_column_overrides(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("text,body,output,gold\nignored,Real prompt,A reply,7\n")
    auto = load_prompts(path).items[0]
    assert (auto.text, auto.response, auto.answer) == ("ignored", "A reply", None)
    chosen = load_prompts(path, column="body", response_column="output", answer_column="gold")
    assert chosen.items[0] == PromptItem("table-0", None, "Real prompt", "A reply", "7")
    with pytest.raises(PromptSourceError, match="available columns: text, body, output, gold"):
        load_prompts(path, column="nope")


def test_parquet_bupo_layout(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "prompt": [
                [{"role": "system", "content": "sys"}, {"role": "user", "content": "2+2?"}],
                [{"role": "system", "content": "sys"}, {"role": "user", "content": "3+3?"}],
            ],
            "reward_model": [{"ground_truth": "4", "style": "rule"}, {"ground_truth": "6"}],
            "final_answer": ["four", "six"],
        }
    )
    path = tmp_path / "bupo.parquet"
    frame.to_parquet(path)
    prompts = load_prompts(path, limit=1)
    assert len(prompts.items) == 1
    item = prompts.items[0]
    assert item.messages[1] == {"role": "user", "content": "2+2?"}
    assert item.answer == "4"
    assert load_prompts(path, answer_column="final_answer").items[1].answer == "six"


def test_math500_parquet(shared_data: Path) -> None:
    prompts = load_prompts(shared_data / "math500.parquet", limit=3)
    assert [item.id for item in prompts.items] == ["math500-0", "math500-1", "math500-2"]
    first = prompts.items[0]
    assert [m["role"] for m in first.messages] == ["system", "user"]
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert load_prompts(shared_data / "math500.parquet", limit=3).sha256 == prompts.sha256


def test_numpy_arrays_of_messages_are_accepted() -> None:
    value = np.array([{"role": "user", "content": "hi"}], dtype=object)
    assert _as_messages(value, "x", "prompt") == ({"role": "user", "content": "hi"},)


def test_ids_from_id_column_must_be_unique(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "dup.jsonl", [{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}]
    )
    with pytest.raises(PromptSourceError, match="duplicate id"):
        load_prompts(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "not found"),
        ("prompts.docx", b"x", "unsupported.*\\.parquet"),
        ("empty.txt", b"\n\n", "no prompts"),
        ("empty.jsonl", b"", "no prompts"),
        ("binary.txt", b"abc\x00\x01def", "not UTF-8 text"),
        ("latin.csv", "prompt\ncaf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        ("binary.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
        ("corrupt.parquet", b"not parquet", "valid parquet"),
        ("nocol.jsonl", b'{"foo": "bar"}\n', "no prompt column.*available columns: foo"),
        ("blank.jsonl", b'{"prompt": "  "}\n', "fill or remove"),
        ("number.json", b"3", "JSON list"),
    ],
)
def test_source_errors(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PromptSourceError, match=message):
        load_prompts(path)


def test_limit_and_column_misuse() -> None:
    with pytest.raises(PromptSourceError, match="positive"):
        load_prompts(limit=0)
    with pytest.raises(PromptSourceError, match="column options"):
        load_prompts("builtin", column="prompt")


# ----------------------------------------------------------------------------- hub


class _FakeDataset:
    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, indices) -> _FakeDataset:
        return _FakeDataset([self.rows[i] for i in indices])

    def to_list(self) -> list[dict]:
        return self.rows


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load) -> None:
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_source_loads_split(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load(name: str, split: str) -> _FakeDataset:
        calls.append((name, split))
        return _FakeDataset([{"problem": f"p{i}", "answer": str(i)} for i in range(5)])

    _fake_datasets(monkeypatch, load)
    prompts = load_prompts("hf:owner/name:train", limit=2)
    assert calls == [("owner/name", "train")]
    assert prompts.source == "hf:owner/name:train"
    assert [(i.id, i.text, i.answer) for i in prompts.items] == [
        ("name-0", "p0", "0"),
        ("name-1", "p1", "1"),
    ]
    assert load_prompts("hf:owner/name").source == "hf:owner/name:test"


def test_hub_unreachable_or_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, split: str) -> None:
        raise ConnectionError("Couldn't reach it")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(OfflineError, match="cannot reach the hub"):
        load_prompts("hf:owner/name")

    def missing(name: str, split: str) -> None:
        raise FileNotFoundError("Dataset 'owner/name' doesn't exist\nmore detail")

    _fake_datasets(monkeypatch, missing)
    with pytest.raises(PromptSourceError, match=r"doesn't exist$"):
        load_prompts("hf:owner/name")


def test_hub_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(PromptSourceError, match="pip install datasets"):
        load_prompts("hf:owner/name")


# ----------------------------------------------------------------------------- named sets


def _bupo_parquet(path: Path, questions: list[str]) -> Path:
    frame = pd.DataFrame(
        {
            "prompt": [
                [{"role": "system", "content": SYSTEM_INSTRUCTION}, {"role": "user", "content": q}]
                for q in questions
            ],
            "reward_model": [{"ground_truth": str(i)} for i in range(len(questions))],
        }
    )
    frame.to_parquet(path)
    return path


def test_named_sets_read_the_local_copy(shared_data: Path) -> None:
    math500 = load_prompts("math500", limit=3)
    by_path = load_prompts(shared_data / "math500.parquet", limit=3)
    assert math500.items == by_path.items and math500.sha256 == by_path.sha256
    assert math500.record() == {
        "source": "math500",
        "resolved": str((shared_data / "math500.parquet").resolve()),
        "sha256": by_path.sha256,
        "n_prompts": 3,
    }
    deepmath = load_prompts("deepmath", limit=2)
    assert deepmath.resolved == str((shared_data / "deepmath-5k.parquet").resolve())
    assert all(item.answer and item.messages[0]["role"] == "system" for item in deepmath.items)


def test_named_set_accepts_name_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bupo_parquet(tmp_path / "deepmath.parquet", ["a?", "b?"])
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    prompts = load_prompts("deepmath")
    assert (prompts.source, prompts.resolved) == ("deepmath", str(path.resolve()))
    assert [item.answer for item in prompts.items] == ["0", "1"]


def test_named_sets_fall_back_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load(name: str, split: str) -> _FakeDataset:
        calls.append((name, split))
        rows = [{"problem": "P0", "answer": "1"}, {"problem": "P1", "answer": "2"}]
        if name == "zwhe99/DeepMath-103K":
            rows = [{"question": "Q0", "final_answer": "3", "r1_solution_1": "..."}]
        return _FakeDataset(rows)

    _fake_datasets(monkeypatch, load)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))  # a directory without the files
    math500 = load_prompts("math500", limit=1)
    assert (math500.source, math500.resolved) == ("math500", "hf:HuggingFaceH4/MATH-500:test")
    assert math500.items == (
        PromptItem(
            "math500-0",
            (
                {"role": "system", "content": SYSTEM_INSTRUCTION},
                {"role": "user", "content": "P0"},
            ),
            None,
            answer="1",
        ),
    )
    monkeypatch.delenv(DATA_ENV)
    deepmath = load_prompts("deepmath")
    assert deepmath.resolved == "hf:zwhe99/DeepMath-103K:train"
    assert deepmath.items[0].messages[1]["content"] == "Q0" and deepmath.items[0].answer == "3"
    assert calls == [("HuggingFaceH4/MATH-500", "test"), ("zwhe99/DeepMath-103K", "train")]


def test_named_set_offline_says_how_to_work_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(name: str, split: str) -> None:
        raise ConnectionError("Couldn't reach it")

    _fake_datasets(monkeypatch, offline)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(OfflineError, match=f"set {DATA_ENV} to a folder that holds math500"):
        load_prompts("math500")


def test_unknown_names_list_the_named_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert set_names() == ("builtin", "deepmath", "math500")
    with pytest.raises(PromptSourceError) as error:
        load_prompts("math5000")
    assert str(error.value) == (
        "unknown prompt set 'math5000'; named sets: builtin, deepmath, math500 "
        "(or give a file path or hf:owner/name)"
    )
    with pytest.raises(PromptSourceError, match="not found"):
        load_prompts(str(tmp_path / "math5000.parquet"))
    with pytest.raises(PromptSourceError, match="column options"):
        load_prompts("math500", column="question")
    monkeypatch.setenv(DATA_ENV, str(_write_jsonl(tmp_path / "file.jsonl", [])))
    with pytest.raises(PromptSourceError, match=f"{DATA_ENV}=.* is not a directory"):
        load_prompts("math500")


# ----------------------------------------------------------------------------- limits and ids


def test_limit_applies_to_prompt_sets_as_to_sources() -> None:
    full = load_prompts(limit=10)
    four = load_prompts(full, limit=4)
    assert four == load_prompts(limit=4) == full.head(4)
    assert load_prompts(full) is full and full.head(None) is full and full.head(99) is full
    assert four.record()["n_prompts"] == 4 and four.record()["resolved"] == "builtin"
    with pytest.raises(PromptSourceError, match="positive"):
        full.head(0)
    with pytest.raises(PromptSourceError, match="column options"):
        load_prompts(full, column="prompt")


def test_cli_names_the_prompt_sets_for_an_unknown_name(tiny_dirs, capsys) -> None:
    from layerpolicy.cli.app import main

    code = main(["entropy", "--model", str(tiny_dirs["qwen2"]), "--prompts", "math5000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "unknown prompt set 'math5000'; named sets: builtin, deepmath, math500" in err


def test_no_problem_text_ships_inside_the_package(shared_data: Path) -> None:
    import layerpolicy

    package = Path(layerpolicy.__file__).parent
    assert [p for ext in (".parquet", ".jsonl", ".csv") for p in package.rglob(f"*{ext}")] == []
    texts = [p for ext in (".py", ".json", ".txt", ".md") for p in package.rglob(f"*{ext}")]
    sources = "\n".join(p.read_text(errors="replace") for p in texts)
    for name in ("math500.parquet", "deepmath-5k.parquet"):
        for item in load_prompts(shared_data / name, limit=20).items:
            assert item.messages[-1]["content"] not in sources
