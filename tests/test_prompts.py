"""Prompt loading (builtin, files, hub) and tokenisation with score masks."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerpolicy.bupo.reward import math_reward
from layerpolicy.errors import LayerpolicyError, OfflineError, PromptSourceError
from layerpolicy.models.tiny import build_tiny_tokenizer
from layerpolicy.prompts import (
    DATA_ENV,
    SYSTEM_INSTRUCTION,
    PromptItem,
    PromptSet,
    builtin_prompts,
    encode_generation_prompt,
    encode_prompt,
    encode_with_response_ids,
    has_thinking_switch,
    load_prompts,
    prompts_sha256,
    set_names,
    thinking_mode,
    with_response,
    with_response_ids,
)
from layerpolicy.prompts.records import _as_messages


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


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


def test_hash_ignores_unset_response_ids_and_counts_set_ones() -> None:
    item = builtin_prompts(1)[0]
    fields = {"id": item.id, "messages": list(item.messages), "text": None, "response": None}
    payload = json.dumps([{**fields, "answer": item.answer}], sort_keys=True, separators=(",", ":"))
    assert prompts_sha256([item]) == hashlib.sha256(payload.encode()).hexdigest()
    sampled = with_response_ids(item, [5, 6])
    assert prompts_sha256([sampled]) != prompts_sha256([item])
    assert with_response(sampled, "x").response_ids is None
    assert isinstance(load_prompts(limit=1), PromptSet)


def test_response_ids_are_scored_verbatim(tokenizer) -> None:
    item = builtin_prompts(1)[0]
    encoded = encode_prompt(with_response_ids(item, [7, 8, 9]), tokenizer)
    prompt = encode_generation_prompt(item, tokenizer)
    assert encoded.input_ids == (*prompt, 7, 8, 9)
    assert encoded == encode_with_response_ids(item, tokenizer, [7, 8, 9])


# ----------------------------------------------------------------------------- encoding


class _ByteTokenizer:
    """Bytes as ids, BOS = 1000, a trivial template: records how it was called."""

    bos = 1000

    def __init__(self, chat_template: str | None = "t") -> None:
        self.chat_template = chat_template

    def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
        ids = list(text.encode("utf-8"))
        return {"input_ids": [self.bos, *ids] if add_special_tokens else ids}

    def apply_chat_template(
        self, messages, tokenize: bool, add_generation_prompt: bool, **variables
    ) -> str:
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_plain_text_keeps_bos_and_scores_every_position() -> None:
    tokenizer = _ByteTokenizer(chat_template=None)
    encoded = encode_prompt(PromptItem("p", None, "ab"), tokenizer)
    assert encoded.input_ids == (1000, ord("a"), ord("b"))
    assert encoded.score_mask == (True, True, True)
    assert encoded.response_start is None and not encoded.truncated


def test_template_wraps_text_and_skips_special_tokens() -> None:
    tokenizer = _ByteTokenizer()
    from_text = encode_generation_prompt(PromptItem("p", None, "hi"), tokenizer)
    from_messages = encode_generation_prompt(
        PromptItem("p", ({"role": "user", "content": "hi"},), None), tokenizer
    )
    assert from_text == from_messages == tuple(b"<user>hi<assistant>")
    untemplated = encode_generation_prompt(
        PromptItem("p", None, "hi"), tokenizer, chat_template=False
    )
    assert untemplated == (1000, *b"hi")


def test_messages_without_template_join_contents() -> None:
    item = PromptItem(
        "p", ({"role": "system", "content": "S"}, {"role": "user", "content": "U"}), None
    )
    ids = encode_generation_prompt(item, _ByteTokenizer(), chat_template=False)
    assert ids == (1000, *b"S\n\nU")


def test_response_mask_scores_positions_predicting_response_tokens(tokenizer) -> None:
    item = builtin_prompts(1)[0]
    prompt_ids = encode_generation_prompt(item, tokenizer)
    response = "12 + 7 = 19. The answer is \\boxed{19}."
    response_ids = tuple(tokenizer(response, add_special_tokens=False)["input_ids"])
    encoded = encode_prompt(with_response(item, response), tokenizer)
    start = len(prompt_ids)
    assert encoded.response_start == start
    assert encoded.input_ids == prompt_ids + response_ids
    scored = [t for t, keep in enumerate(encoded.score_mask) if keep]
    assert scored == list(range(start - 1, len(encoded.input_ids) - 1))
    assert tuple(encoded.input_ids[t + 1] for t in scored) == response_ids
    assert len(encoded.score_mask) == len(encoded.input_ids)


def test_chat_template_matches_tokenizer_rendering(tokenizer) -> None:
    item = builtin_prompts(1)[0]
    rendered = tokenizer.apply_chat_template(
        list(item.messages), tokenize=False, add_generation_prompt=True
    )
    expected = tuple(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    encoded = encode_prompt(item, tokenizer)
    assert encoded.input_ids == expected
    assert all(encoded.score_mask)


def test_response_ids_are_used_verbatim() -> None:
    tokenizer = _ByteTokenizer()
    item = PromptItem("p", None, "q")
    encoded = encode_with_response_ids(item, tokenizer, [7, 8, 9])
    prompt = tuple(b"<user>q<assistant>")
    assert encoded.input_ids == (*prompt, 7, 8, 9)
    assert encoded.response_start == len(prompt)
    expected_mask = [False] * (len(prompt) - 1) + [True, True, True, False]
    assert list(encoded.score_mask) == expected_mask


def test_truncation() -> None:
    tokenizer = _ByteTokenizer()
    item = PromptItem("p", None, "q")  # prompt is 18 ids
    full = encode_with_response_ids(item, tokenizer, [7, 8, 9, 10])
    cut = encode_with_response_ids(item, tokenizer, [7, 8, 9, 10], max_tokens=20)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:20]
    assert [t for t, keep in enumerate(cut.score_mask) if keep] == [17, 18]
    into_prompt = encode_with_response_ids(item, tokenizer, [7, 8], max_tokens=10)
    assert into_prompt.truncated and not any(into_prompt.score_mask)
    plain = encode_prompt(item, tokenizer, max_tokens=5)
    assert plain.input_ids == full.input_ids[:5] and plain.truncated and all(plain.score_mask)
    assert not encode_prompt(item, tokenizer, max_tokens=100).truncated


# ----------------------------------------------------------------------------- thinking mode

QWEN3_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@pytest.fixture
def thinking_tokenizer():
    """The tiny tokenizer under a Qwen3-style template: thinking unless enable_thinking=False."""
    tok = build_tiny_tokenizer()
    tok.chat_template = QWEN3_STYLE
    return tok


def _rendered_ids(tok, item, **variables) -> tuple[int, ...]:
    text = tok.apply_chat_template(
        list(item.messages), tokenize=False, add_generation_prompt=True, **variables
    )
    return tuple(tok(text, add_special_tokens=False)["input_ids"])


def test_thinking_templates_default_to_no_thinking(thinking_tokenizer) -> None:
    tok, item = thinking_tokenizer, builtin_prompts(1)[0]
    assert has_thinking_switch(tok)
    no_thinking = _rendered_ids(tok, item, enable_thinking=False)
    thinking = _rendered_ids(tok, item, enable_thinking=True)
    assert no_thinking != thinking
    assert encode_generation_prompt(item, tok) == no_thinking
    assert encode_generation_prompt(item, tok, thinking=False) == no_thinking
    assert encode_generation_prompt(item, tok, thinking=True) == thinking
    assert (thinking_mode(tok), thinking_mode(tok, True)) == (False, True)
    encoded = encode_with_response_ids(item, tok, [5, 6])
    assert encoded.input_ids[: encoded.response_start] == no_thinking


def test_templates_without_a_switch_have_no_thinking_mode(tokenizer) -> None:
    item = builtin_prompts(1)[0]
    assert not has_thinking_switch(tokenizer)
    assert thinking_mode(tokenizer) is None and thinking_mode(tokenizer, False) is None
    assert encode_generation_prompt(item, tokenizer, thinking=False) == encode_generation_prompt(
        item, tokenizer
    )
    with pytest.raises(LayerpolicyError, match="drop --thinking"):
        encode_generation_prompt(item, tokenizer, thinking=True)
    assert not has_thinking_switch(_ByteTokenizer())


def test_thinking_needs_the_chat_template(thinking_tokenizer) -> None:
    assert thinking_mode(thinking_tokenizer, chat_template=False) is None
    with pytest.raises(LayerpolicyError, match="drop --thinking"):
        thinking_mode(thinking_tokenizer, True, chat_template=False)


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
