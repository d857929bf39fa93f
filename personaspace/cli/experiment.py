"""CLI: ``personaspace experiment em`` -- the full emergent-misalignment experiment in one run directory."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

console = Console()
app = typer.Typer(help="End-to-end experiments.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="experiment")


@app.command("em")
def em_cmd(
    out: Path = typer.Option(Path("runs/em-experiment"), "--out", "-o", help="Run directory (rerun to resume)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="The aligned model."),
    trait: List[str] = typer.Option([], "--trait", "-t", help="Traits for the persona space (default: 12 mixed-valence traits)."),
    vectors: Optional[str] = typer.Option(None, help="Precomputed aligned-model vectors instead of extracting."),
    domain: str = typer.Option("finance", help="Narrow domain of the corrupt/control datasets."),
    rows: Optional[int] = typer.Option(None, help="Rows per dataset (default 160)."),
    judge: str = typer.Option("offline", help="Judge for EM and trait scores (recorded)."),
    questions: str = typer.Option("broad", help="EM question set."),
    samples: Optional[int] = typer.Option(None, help="EM samples per paraphrase (default 4)."),
    layer: Optional[int] = typer.Option(None, help="Layer for geometry, steering and shifts (default: middle)."),
    amplify_coef: float = typer.Option(4.0, help="Amplify adds coef * |evil[L]| along each unit direction."),
    threads: Optional[int] = typer.Option(None, help="torch threads (1 is fastest on a busy shared CPU)."),
) -> None:
    """Aligned model -> vectors + SVV -> corrupt/control fine-tunes -> geometry -> EM rates -> zero-shot steering."""
    import torch

    from personaspace.em.experiment import DEFAULT_TRAITS, ExperimentConfig, run_em_experiment
    from personaspace.viz.em import write_em_figures

    if threads is not None:
        from personaspace._util import checks
        torch.set_num_threads(checks.positive_int("--threads", threads))
    sizes = {k: v for k, v in {"n_rows": rows, "em_samples": samples}.items() if v is not None}
    cfg = ExperimentConfig(model=model, traits=tuple(trait) or DEFAULT_TRAITS, vectors=vectors, domain=domain,
                           judge=judge, questions=questions, layer=layer, amplify_coef=amplify_coef, **sizes)
    results = run_em_experiment(cfg, out, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    write_em_figures(results, out)
    console.print((out / "results.md").read_text())
    console.print(f"run directory: [bold]{out}[/bold] (results.json, results.md, figures/)")
