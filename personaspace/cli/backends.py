"""``personaspace backends``: which engine backends are installed, and whether NDIF is usable.

Runs no model: it reports versions, and with ``--check-ndif`` checks the NDIF API key and that the
NDIF host answers, ending in one clear message when either is missing.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def backend_status() -> list[dict[str, str]]:
    """One row per backend: name, the package it needs, installed version (or how to install)."""
    torch_version = _version("torch") or "missing"
    rows = [
        {"backend": "fused", "package": "torch", "version": torch_version, "use": "default for Llama-family models; fastest capture"},
        {"backend": "hooks", "package": "torch", "version": torch_version, "use": "default for other architectures; any HF causal LM"},
    ]
    for name, dist, use in (
        ("nnsight", "nnsight", "existing nnsight models; remote=True on NDIF"),
        ("transformer_lens", "transformer-lens", "existing TransformerBridge models"),
    ):
        rows.append({"backend": name, "package": dist, "version": _version(dist) or "missing: pip install 'personaspace[backends]'", "use": use})
    return rows


def register(app: typer.Typer) -> None:
    @app.command("backends")
    def backends(check_ndif: bool = typer.Option(False, "--check-ndif", help="Check NDIF_API_KEY and that the NDIF host answers.")) -> None:
        """List the engine backends (fused, hooks, nnsight, TransformerLens) and check NDIF access."""
        from rich.console import Console

        from personaspace.cli.tables import fit_table

        console = Console()
        table = fit_table("Engine backends (see docs/backends.md)", ("backend", "package", "version", "use"),
                          keep=("backend", "package", "version"))
        for row in backend_status():
            table.add_row(row["backend"], row["package"], row["version"], row["use"])
        console.print(table)
        if check_ndif:
            from personaspace.engine.backends.nnsight_backend import check_ndif as check

            console.print(f"NDIF reachable at {check()} and an API key is set.")
