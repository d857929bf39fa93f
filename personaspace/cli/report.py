"""CLI: ``personaspace report RUN_DIR`` -- (re)write the run's ``report.html``, and the hook the other
commands call at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


def report_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory (extract, sweep, em eval, experiment, align, finetune) or the "
                                             "JSON file of `steer --evaluate --out` / `align eval --out`."),
    tokens: int = typer.Option(2, help="Extraction runs: kept pairs shown in the token projection view (loads the model; 0: none)."),
    examples: int = typer.Option(4, help="Extraction runs: kept and dropped pairs shown with their judge scores."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Extraction runs of a trait YAML: its path (built-in names are found)."),
) -> None:
    """Write the run's report.html: settings, headline numbers, figures and examples, in one file that opens offline."""
    from personaspace._util import checks
    from personaspace.viz.report import write_report

    checks.non_negative_int("--tokens", tokens)
    checks.non_negative_int("--examples", examples)
    with console.status(f"Writing the report of {run_dir}..."):
        path = write_report(run_dir, token_views=tokens, examples=examples, trait=trait)
    console.print(f"report: [bold]{path}[/bold]")


def write_run_report(run_dir: Any, **kw: Any) -> None:
    """At the end of a command: write the run's report and print where, or say (without failing the
    finished run, whose results are saved) why it could not be written."""
    from rich.markup import escape

    from personaspace.errors import PersonaspaceError
    from personaspace.viz.report import write_report

    try:
        with console.status("Writing report.html..."):
            path = write_report(run_dir, **kw)
    except Exception as exc:  # noqa: BLE001 - the run is done and saved; a report problem must not fail it
        message = exc.message if isinstance(exc, PersonaspaceError) else f"{type(exc).__name__}: {exc}"
        err_console.print(f"[yellow]warning:[/yellow] no report written: {escape(str(message))} "
                          f"(retry: personaspace --debug report {escape(str(run_dir))})", highlight=False)
        return
    console.print(f"report: [bold]{path}[/bold]")
