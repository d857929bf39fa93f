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
    epochs: Optional[float] = typer.Option(None, help="Epochs of the fine-tunes (default 3; the positive control too)."),
    positive_data: str = typer.Option("broad_misaligned", help="Positive control's fine-tuning data: a built-in set, YAML or chat JSONL."),
    positive_control: bool = typer.Option(True, "--positive-control/--no-positive-control",
                                          help="Fine-tune on broadly misaligned answers: EM must rise, or the measurement is blind."),
    dose_rows: List[int] = typer.Option([], "--dose-rows", help="Dose grid: rows of the corrupt set (repeat; with --dose-epochs)."),
    dose_epochs: List[float] = typer.Option([], "--dose-epochs", help="Dose grid: epochs (repeat; every rows x epochs cell is a fine-tune)."),
    geometry: bool = typer.Option(True, "--geometry/--no-geometry", help="Extract on the fine-tuned models and compare geometry."),
    steering: bool = typer.Option(True, "--steering/--no-steering", help="Zero-shot ablate/amplify conditions of the corrupted model."),
    shift: bool = typer.Option(True, "--shift/--no-shift", help="Projection shift vs trait score."),
    threads: Optional[int] = typer.Option(None, help="torch threads (1 is fastest on a busy shared CPU)."),
) -> None:
    """Aligned model -> vectors + SVV -> positive control -> corrupt/control fine-tunes (+ dose grid) -> geometry -> EM rates
    -> zero-shot steering. Stages switched off with --no-geometry/--no-steering/--no-shift can be added by a later rerun."""
    import torch

    from personaspace.em.experiment import DEFAULT_TRAITS, ExperimentConfig, run_em_experiment
    from personaspace.viz.em import write_em_figures

    if threads is not None:
        from personaspace._util import checks
        torch.set_num_threads(checks.positive_int("--threads", threads))
    sizes: dict = {k: v for k, v in {"n_rows": rows, "em_samples": samples}.items() if v is not None}
    if epochs is not None:
        sizes["finetune"] = {**ExperimentConfig().finetune, "epochs": epochs}
    cfg = ExperimentConfig(model=model, traits=tuple(trait) or DEFAULT_TRAITS, vectors=vectors, domain=domain,
                           judge=judge, questions=questions, layer=layer, amplify_coef=amplify_coef,
                           positive_data=positive_data if positive_control else None, dose_rows=tuple(dose_rows),
                           dose_epochs=tuple(dose_epochs), geometry=geometry, steering=steering, shift=shift, **sizes)
    from personaspace.cli.tables import progress_bars

    with progress_bars(console) as bars:  # the stage lines above the bars, or on stdout without bars
        results = run_em_experiment(cfg, out, progress=bars)
    write_em_figures(results, out)
    from personaspace.cli.tables import markdown_blocks

    for block in markdown_blocks((out / "results.md").read_text()):  # its tables fit the terminal
        console.print(block)
    console.print(f"run directory: [bold]{out}[/bold] (results.json, results.md, figures/)")
    from personaspace.cli.report import write_run_report

    write_run_report(out)
