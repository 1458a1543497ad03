"""The Jacobian lens readout: identity lens = logit lens, entropies = TransformerLens's own
JacobianLens readout, a resumable fit, and one-line refusals of lenses that do not fit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from layerpolicy.cli.app import main
from transformer_lens.tools.analysis import JacobianLens
from transformer_lens.tools.analysis.logit_lens import logit_readout

from layerpolicy.engine import EngineConfig, score_batch
from layerpolicy.errors import LayerpolicyError
from layerpolicy.models import load_model
from layerpolicy.prompts import PromptItem, encode_prompt
from layerpolicy.readout.capture import capture, make_batch
from layerpolicy.readout.jacobian import META_KEY, load_lens
from layerpolicy.readout.jacobian_fit import FitSettings, fit_lens
from layerpolicy.readout.sites import Site
from layerpolicy.readout.top_tokens import top_tokens

TEXTS = (
    "What is 12 + 7? Let's think step by step. 12 + 7 = 19. The answer is 19.",
    "Solve for x: 3x + 2 = 11. So 3x = 9 and x = 3. The final answer is boxed 3.",
    "The sum of the first ten positive integers is 55, because 10 * 11 / 2 = 55.",
)
SETTINGS = FitSettings("texts", "0" * 64, len(TEXTS), max_seq_len=40, skip_first_positions=2)


def entropy(logits: torch.Tensor) -> np.ndarray:
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).numpy()


@pytest.fixture(scope="module")
def qwen2(tiny_dirs):
    """A tiny Qwen2 of this module's own: TransformerLens's readout runs leave state on the
    bridge that the shared session models must not see."""
    return load_model(str(tiny_dirs["qwen2"]), device="cpu")


@pytest.fixture
def fitted(qwen2, cache_dir, one_thread):
    """A lens fitted on the tiny Qwen2 model, in an empty cache."""
    return qwen2, fit_lens(qwen2, TEXTS, SETTINGS)


def rows(columns: dict[str, np.ndarray], site: Site) -> dict[str, np.ndarray]:
    keep = (columns["site"] == site.name) & (columns["layer"] == site.layer)
    return {name: values[keep] for name, values in columns.items() if values.dtype != object}


def test_identity_lens_reads_exactly_the_logit_lens(tiny_models, tmp_path, one_thread):
    model = tiny_models["llama"]
    d, blocks = model.info.d_model, model.n_layers - 1
    lens = JacobianLens({b: torch.eye(d) for b in range(blocks)}, n_prompts=1, d_model=d)
    lens.save(str(tmp_path / "identity.pt"), dtype=torch.float32)
    encoded = [encode_prompt(PromptItem(f"p{i}", None, t), model.tokenizer) for i, t in
               enumerate(TEXTS)]  # fmt: skip
    lensed = score_batch(
        model, encoded, EngineConfig("jacobian-lens", lens=str(tmp_path / "identity.pt"))
    )
    logit = score_batch(model, encoded, EngineConfig("logit-lens"))
    assert lensed.keys() == logit.keys()
    for name in ("entropy", "kl_to_final", "target_logprob", "target_rank", "top1_agree"):
        np.testing.assert_array_equal(lensed[name], logit[name], err_msg=name)


def test_entropies_equal_transformer_lens_readout_through_the_fitted_lens(fitted):
    model, path = fitted
    lens = JacobianLens.load(str(path))
    encoded = encode_prompt(PromptItem("p", None, TEXTS[0]), model.tokenizer, chat_template=False)
    columns = score_batch(model, [encoded], EngineConfig("jacobian-lens", lens=str(path)))
    tokens = torch.tensor([encoded.input_ids])
    theirs = lens.readout(model.bridge, tokens, return_full_logits=True, top_k=1)
    L = model.n_layers
    for block in range(L - 1):
        ours = rows(columns, Site("resid", block + 1))
        assert np.array_equal(ours["position"], np.arange(len(encoded.input_ids)))
        expected = entropy(theirs.lens_logits[block])
        np.testing.assert_allclose(ours["entropy"], expected, atol=1e-5, rtol=0)
        assert np.ptp(ours["entropy"]) > 1e-3  # the entropies vary: the check can fail
    top = top_tokens(model, encoded, 5, [Site("resid", 2)], readout="jacobian-lens", lens=str(path))
    probs, ids = torch.softmax(theirs.lens_logits[1][5].double(), dim=-1).topk(5)
    assert top.token_id.tolist() == ids.tolist()
    np.testing.assert_allclose(top.prob, probs.numpy(), atol=1e-6)
    # module writes of layer l are read through J_l, with the same final norm and W_U
    batch = make_batch([encoded], 0, torch.device("cpu"))
    site = Site("mlp", 2)
    vectors = capture(model, batch, [site])
    with torch.inference_mode():
        logits = logit_readout(model.bridge, lens.transport(vectors[site], 1)).values
    np.testing.assert_allclose(rows(columns, site)["entropy"], entropy(logits), atol=1e-5, rtol=0)
    # J_L = I: the last layer's resid row is its logit-lens row
    logit = score_batch(model, [encoded], EngineConfig("logit-lens"))
    np.testing.assert_array_equal(
        rows(columns, Site("resid", L))["entropy"], rows(logit, Site("resid", L))["entropy"]
    )


def test_an_interrupted_fit_resumes_to_the_lens_of_one_fit(qwen2, cache_dir, one_thread):
    model = qwen2
    settings = FitSettings("texts", "1" * 64, len(TEXTS), max_seq_len=40, skip_first_positions=2)

    def stop_after_two(done: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_lens(model, TEXTS, settings, advance=stop_after_two)
    seen: list[int] = []
    resumed = JacobianLens.load(str(fit_lens(model, TEXTS, settings, advance=seen.append)))
    assert seen[0] == 2 and resumed.n_prompts == len(TEXTS)
    whole = JacobianLens.fit(
        model.bridge, list(TEXTS), corpus="texts", max_seq_len=40, skip_first_positions=2,
        show_progress=False,
    )  # fmt: skip
    for block in whole.source_layers:
        torch.testing.assert_close(resumed.jacobians[block], whole.jacobians[block])
    assert resumed.metadata[META_KEY]["model"] == model.info.name


def test_a_lens_of_another_model_or_revision_is_refused_in_one_line(fitted, tiny_models, tmp_path):
    _, path = fitted
    other = tiny_models["llama"]
    with pytest.raises(LayerpolicyError) as refused:
        load_lens(other, str(path))
    message = str(refused.value)
    assert "\n" not in message and "fitted for" in message
    assert f"layerpolicy lens fit --model {other.info.spec}" in message
    lens = JacobianLens.load(str(path))
    lens.metadata[META_KEY] = {**lens.metadata[META_KEY], "revision": "0123abcd"}
    lens.save(str(tmp_path / "old.pt"))
    with pytest.raises(LayerpolicyError, match="fitted for revision 0123abcd") as refused:
        load_lens(fitted[0], str(tmp_path / "old.pt"))
    assert "\n" not in str(refused.value)


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error:"), (code, err)
    return err


def test_bad_lens_choices_name_the_fit_command_before_loading(
    fitted, tiny_dirs, capsys, tmp_path, monkeypatch
):
    model = str(tiny_dirs["llama"])
    base = ["entropy", "--model", model, "--out", str(tmp_path / "run"), "--readout"]
    monkeypatch.setattr("layerpolicy.models.resolve.hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(
        "layerpolicy.models.load_model", lambda *a, **k: pytest.fail("loaded a model")
    )
    fix = f"layerpolicy lens fit --model {model}"
    err = one_line_error(capsys, [*base, "jacobian-lens"])
    assert "none is fitted for" in err and fix in err
    err = one_line_error(capsys, [*base, "jacobian-lens", "--lens", "no/such/lens.pt"])
    assert "unknown lens no/such/lens.pt" in err and fix in err
    err = one_line_error(capsys, [*base, "jacobian-lens", "--lens", "gemma-2-2b"])
    assert "hub" in err and fix in err
    err = one_line_error(capsys, [*base, "jacobian-lens", "--lens", str(fitted[1])])
    assert f"was fitted for {fitted[0].info.name}" in err and fix in err
    err = one_line_error(capsys, [*base, "raw", "--lens", str(fitted[1])])
    assert "--readout jacobian-lens" in err


def test_lens_fit_then_compare_overlays_three_readouts_of_one_model(
    tiny_dirs, cache_dir, tmp_path, capsys, one_thread
):
    model = str(tiny_dirs["qwen3"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TEXTS) + "\n")
    fit = ["lens", "fit", "--model", model, "--prompts", str(prompts), "--limit", "3",
           "--max-seq-len", "40", "--skip-first-positions", "2", "--device", "cpu"]  # fmt: skip
    assert main(fit) == 0
    assert "lens for" in capsys.readouterr().out
    run = tmp_path / "run"
    entropy = ["entropy", "--model", model, "--readout", "jacobian-lens", "--prompts",
               str(prompts), "--limit", "2", "--sites", "modules", "--out", str(run)]  # fmt: skip
    assert main(entropy) == 0, capsys.readouterr().err
    record = json.loads((run / "run.json").read_text())
    assert record["settings"]["readout"] == "jacobian-lens"
    assert record["readout_checks"]["lens"]["sha256"] is not None
    assert any(path.suffix == ".svg" for path in (run / "figures").iterdir())
    readouts = ["raw", "logit-lens", "jacobian-lens"]
    argv = ["compare", model, "--readouts", ",".join(readouts), "--prompts", str(prompts),
            "--limit", "2", "--sites", "resid", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "cmp"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert sorted(table.readout) == sorted(readouts)
    assert table.policy_entropy.nunique() == 1  # one model: the same pi_theta under every readout
    runs = sorted((tmp_path / "cache").iterdir())
    lensed = json.loads(next(r for r in runs if "jacobian-lens" in r.name).joinpath("run.json")
                        .read_text())  # fmt: skip
    assert lensed["settings"]["lens"] is None
    assert lensed["readout_checks"]["lens"]["n_prompts"] == len(TEXTS)
    assert (tmp_path / "cmp" / "figures").is_dir()
