"""`layerpolicy view`: the report's content and errors, and the page in headless Chromium."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layerpolicy.cli.app import main
from transformers import AutoTokenizer

from layerpolicy.analysis import analyse, load_run
from layerpolicy.config import AnalysisConfig
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_model
from layerpolicy.report.view import NO_MODULES, NO_TOP_K, build_report

TOP_K = 5
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1300,1800",
)
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed "
    "(apt-get install chromium chromium-driver; .ci/run installs them)",
)


def _run(model, out: Path, config: AnalysisConfig) -> Path:
    analyse(model, None, limit=2, config=config, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def qwen2(tiny_dirs):
    """The tiny Qwen2 alone (its run records the directory, whose tokenizer the page uses)."""
    return load_model(str(tiny_dirs["qwen2"]), device="cpu", progress=False)


@pytest.fixture(scope="module")
def top_run(qwen2, tmp_path_factory, analysis_config) -> Path:
    """A finished run of 2 built-in prompts whose resid and final rows hold top-5 tokens."""
    top_k = dataclasses.replace(analysis_config, top_k=TOP_K)
    return _run(qwen2, tmp_path_factory.mktemp("view") / "top", top_k)


@pytest.fixture(scope="module")
def plain_run(qwen2, tmp_path_factory, analysis_config) -> Path:
    """The same run without top-k data."""
    no_top_k = dataclasses.replace(analysis_config, top_k=0)
    return _run(qwen2, tmp_path_factory.mktemp("view") / "plain", no_top_k)


@pytest.fixture(scope="module")
def tokenizer(tiny_dirs):
    return AutoTokenizer.from_pretrained(tiny_dirs["qwen2"])


def _payload(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="lp-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def _probability(p: float) -> str:
    """How the page writes a probability: 4 decimals, or 2 significant digits below 0.001."""
    return f"{p:.4f}" if p >= 0.001 else f"{p:.1e}"


def _shown(tokenizer, token_id: int) -> str:
    """How the page writes a token: its decoded text with JSON escapes, in single quotes."""
    return "'" + json.dumps(tokenizer.decode([token_id]), ensure_ascii=False)[1:-1] + "'"


class _Links(HTMLParser):
    """Every src / href attribute of the page's elements (script bodies are not parsed)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [(tag, value or "") for name, value in attrs if name in ("src", "href")]


def test_page_is_self_contained(top_run):
    page = load_run(top_run).view().html
    parser = _Links()
    parser.feed(page)
    assert parser.links == []  # no script src, stylesheet or image: nothing to fetch
    assert "plotly.js v" in page and 'id="lp-heatmap"' in page
    assert 'id="lp-no-top"' not in page


def _grid_row_site(row: int, n_layers: int) -> tuple[str, int]:
    """The (site, layer) a heatmap row shows: embed, resid 1..L, then the final policy."""
    if row == 0:
        return "embed", 0
    return ("final", n_layers) if row == n_layers + 1 else ("resid", row)


def test_heatmap_cells_hold_the_token_table(top_run, tokenizer):
    result = load_run(top_run)
    data = _payload(result.view().html)
    tokens = result.tokens
    n_layers = int(tokens.n_layers.iloc[0])
    assert data["has_top"] and data["layers"][0] == "embed" and len(data["layers"]) == n_layers + 2
    assert [p["id"] for p in data["prompts"]] == list(dict.fromkeys(tokens.prompt_id))
    checked_ranks = 0
    for prompt in data["prompts"]:
        rows = tokens[tokens.prompt_id == prompt["id"]]
        assert prompt["positions"] == sorted(rows.position.unique().tolist())
        for r, c in [(0, 0), (2, 1), (n_layers, len(prompt["positions"]) - 1), (n_layers + 1, 3)]:
            site, layer = _grid_row_site(r, n_layers)
            at = (rows.site == site) & (rows.layer == layer)
            row = rows[at & (rows.position == prompt["positions"][c])].iloc[0]
            for metric in ("entropy", "kl_to_final"):
                assert prompt["metrics"][metric][r][c] == pytest.approx(row[metric], abs=1e-4)
            if site == "embed":
                assert prompt["top_ids"][r][c] == [-1] * TOP_K
                continue
            assert prompt["top_ids"][r][c] == [int(i) for i in row.top_ids]
            probs = np.exp(row.top_logprobs.astype(float))
            assert prompt["top_probs"][r][c] == [_probability(p) for p in probs]
            assert data["vocab"][str(row.top_ids[0])] == html.escape(
                _shown(tokenizer, int(row.top_ids[0])), quote=False
            )
        # Where the next token is among the top 5, the list holds it at its rank.
        for r in range(1, n_layers + 2):
            for c, target in enumerate(prompt["targets"]):
                rank, ids = prompt["metrics"]["target_rank"][r][c], prompt["top_ids"][r][c]
                if rank is not None and rank <= TOP_K:
                    assert ids[int(rank) - 1] == target
                    checked_ranks += 1
    assert checked_ranks > 0


def test_run_without_top_k_gets_a_note(plain_run):
    result = load_run(plain_run)
    assert "top_ids" not in result.tokens.columns
    page = result.view().html
    assert f'<p class="note" id="lp-no-top">{NO_TOP_K}</p>' in page
    data = _payload(page)
    assert not data["has_top"] and "top_ids" not in data["prompts"][0]


def test_max_prompts_limits_the_heatmaps_and_must_be_positive(top_run):
    result = load_run(top_run)
    assert len(_payload(result.view(max_prompts=1).html)["prompts"]) == 1
    with pytest.raises(LayerpolicyError, match="--max-prompts must be at least 1"):
        result.view(max_prompts=0)


def test_run_without_module_sites_says_so(top_run):
    result = load_run(top_run)
    assert NO_MODULES not in result.view().html
    result.summary = result.summary[result.summary.site.isin(["embed", "resid", "final"])]
    assert NO_MODULES in result.view().html


def test_report_of_another_kind_of_run_is_refused(top_run):
    result = load_run(top_run)
    result.record = {**result.record, "kind": "train"}
    with pytest.raises(LayerpolicyError, match="needs an entropy run"):
        build_report(result)


def test_notebook_display_is_an_iframe_of_the_page(top_run):
    report = load_run(top_run).view()
    shown = report._repr_html_()
    srcdoc = re.fullmatch(r'<iframe srcdoc="(.*)" style="[^"]*"></iframe>', shown, re.S).group(1)
    assert '"' not in srcdoc and html.unescape(srcdoc) == report.html


@pytest.mark.end_to_end
def test_view_cli_writes_the_report(top_run, tmp_path, capsys):
    assert main(["view", str(top_run)]) == 0, capsys.readouterr().err
    assert (top_run / "view.html").read_text(encoding="utf-8") == load_run(top_run).view().html
    out = tmp_path / "page.html"
    assert main(["view", str(top_run), "--out", str(out), "--max-prompts", "1"]) == 0
    assert len(_payload(out.read_text(encoding="utf-8"))["prompts"]) == 1


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_view_cli_on_what_is_not_a_finished_run(top_run, tmp_path, capsys):
    assert "does not exist" in _one_line_error(["view", str(tmp_path / "nothing")], capsys)
    (tmp_path / "empty").mkdir()
    assert str(tmp_path / "empty") in _one_line_error(["view", str(tmp_path / "empty")], capsys)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(top_run, unfinished)
    record = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**record, "status": "running"}))
    assert "not a finished" in _one_line_error(["view", str(unfinished)], capsys)
    training = tmp_path / "train"
    for part in ("before", "after"):
        shutil.copytree(top_run, training / part)
    message = _one_line_error(["view", str(training)], capsys)
    assert "no dynamics.parquet" in message and str(training / "before") in message


@pytest.mark.parametrize("table", ["tokens.parquet", "prompt_means.parquet", "summary.csv"])
def test_view_cli_on_a_damaged_run_names_the_file_and_the_fix(top_run, tmp_path, capsys, table):
    damaged = tmp_path / "damaged"
    shutil.copytree(top_run, damaged)
    data = (damaged / table).read_bytes()
    (damaged / table).write_bytes(data[:60] if table.endswith(".parquet") else b"")
    err = _one_line_error(["view", str(damaged)], capsys)
    assert f"{damaged / table} is damaged" in err and "--force" in err
    if table != "summary.csv":  # a missing summary.csv means the run never finished
        (damaged / table).unlink()
        err = _one_line_error(["view", str(damaged)], capsys)
        assert f"{damaged / table} is missing" in err and "--force" in err


# ------------------------------------------------------------------ the page in headless Chromium


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by selenium, with a fresh profile and its console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="layerpolicy-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(driver, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "return document.querySelectorAll('#lp-heatmap g.heatmaplayer image').length"
        )
    )


def _hover(driver, x: int, y: int) -> list[str]:
    """Hover the heatmap cell at position x, layer row y; the hover label's lines.

    Plotly.js 4 finds heatmap cells by value (xval/yval), not by [row, column] point numbers.
    """
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script(
        "Plotly.Fx.hover(document.getElementById('lp-heatmap'),"
        " [{curveNumber: 0, xval: arguments[0], yval: arguments[1]}]);",
        x,
        y,
    )
    script = (
        "return Array.from(document.querySelectorAll('#lp-heatmap .hovertext tspan.line'))"
        ".map(t => t.textContent);"
    )
    return WebDriverWait(driver, 10).until(lambda d: d.execute_script(script))


def _errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow
@needs_browser
def test_page_in_chromium_draws_and_hovers_top_tokens(browser, top_run, tokenizer):
    assert main(["view", str(top_run)]) == 0
    _open(browser, top_run / "view.html")
    assert _errors(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert len(browser.find_elements("css selector", "#lp-profile .scatterlayer .trace")) > 0
    assert len(browser.find_elements("css selector", "#lp-change .barlayer .trace")) == 2

    tokens = load_run(top_run).tokens
    first = tokens[tokens.prompt_id == tokens.prompt_id.iloc[0]]
    position = int(sorted(first.position.unique())[2])
    row = first[(first.site == "resid") & (first.layer == 2) & (first.position == position)].iloc[0]
    lines = _hover(browser, position, 2)
    assert lines[0].startswith(f"resid layer 2 · position {position} ")
    assert f"entropy {row.entropy:.3f}" in lines[1]
    expected = [
        f"{_shown(tokenizer, int(i))}  {_probability(p)}"
        for i, p in zip(row.top_ids, np.exp(row.top_logprobs.astype(float)), strict=True)
    ]
    assert lines[2] == f"top {TOP_K} tokens of this policy:" and lines[3:] == expected

    from selenium.webdriver.support.ui import Select

    second = tokens[tokens.prompt_id == tokens.prompt_id.unique()[1]]
    Select(browser.find_element("id", "lp-prompt")).select_by_index(1)
    Select(browser.find_element("id", "lp-metric")).select_by_value("target_rank")
    drawn = browser.execute_script(
        "const t = document.getElementById('lp-heatmap').data[0];return [t.x, t.z];"
    )
    assert drawn[0] == sorted(second.position.unique().tolist())
    final = second[second.site == "final"].sort_values("position").target_rank.to_numpy(float)
    np.testing.assert_allclose(
        np.array(drawn[1][-1], dtype=float), np.log10(final), rtol=1e-4, equal_nan=True
    )
    assert _errors(browser) == []


@pytest.mark.slow
@needs_browser
def test_page_in_chromium_without_top_k_shows_the_note(browser, plain_run):
    assert main(["view", str(plain_run)]) == 0
    _open(browser, plain_run / "view.html")
    assert _errors(browser) == []
    assert browser.find_element("id", "lp-no-top").text == NO_TOP_K
    position = int(pd.read_parquet(plain_run / "tokens.parquet").position.min())
    assert _hover(browser, position, 1)[-1] == NO_TOP_K
