"""Notebooks are stored without outputs and run top to bottom with tiny settings."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
TINY_SETTINGS = {
    "MODEL": '"tiny-qwen2"',
    "MODELS": '["tiny-qwen2", "tiny-llama"]',
    "PROMPTS": '"builtin"',
    "TRAIN_PROMPTS": '"builtin"',
    "LIMIT": "3",
    "N_BOOT": "50",
    "STEPS": "2",
    "INTER_STEPS": "1",
    "GROUP_SIZE": "2",
    "MAX_NEW_TOKENS": "8",
}


def with_tiny_parameters(
    notebook: nbformat.NotebookNode, scratch: Path | None = None
) -> nbformat.NotebookNode:
    """Insert, after the cell tagged `parameters`, a cell overriding the names it defines.

    `scratch` is where the notebook may write (its CACHE), so tests leave the repository alone.
    """
    index = next(
        i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])
    )
    defined = notebook.cells[index].source
    settings = dict(TINY_SETTINGS)
    if scratch is not None:
        settings["CACHE"] = repr(str(scratch / "runs-cache"))
    lines = [f"{name} = {value}" for name, value in settings.items() if f"{name} =" in defined]
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(lines)))
    return notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in notebook.cells)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_with_tiny_settings(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPOLICY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = with_tiny_parameters(nbformat.read(path, as_version=4), tmp_path)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1
