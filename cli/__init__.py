"""The `layerpolicy` command line (installed as layerpolicy.cli)."""
