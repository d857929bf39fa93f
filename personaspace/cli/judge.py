"""CLI: ``personaspace judge validate``: measure a judge on the labelled validation set before using it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Optional

import typer

app = typer.Typer(help="Judges: measure one on the labelled validation set (docs/judges.md).", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="judge")


def report_name(identity: str) -> str:
    """The JSON file name of a judge's report: its identity with anything unusual replaced by '_'."""
    return "validation-" + re.sub(r"[^A-Za-z0-9._-]+", "_", identity).strip("_") + ".json"


@app.command("validate")
def validate_cmd(
    judge: str = typer.Option("offline", "--judge", "-j", help="offline | openai:MODEL | hf:NAME_OR_PATH."),
    trait: Optional[List[str]] = typer.Option(None, "--trait", "-t", help="Trait to validate (repeat; default: all 8 with answers)."),
    out: Optional[str] = typer.Option(None, help="Directory for the JSON report (validation-<judge>.json)."),
    min_mass: Optional[float] = typer.Option(None, help="LLM judges: least number probability for a score (default 0.25; 0 = always score)."),
    base_url: Optional[str] = typer.Option(None, help="openai: judges: the endpoint (default $PERSONASPACE_LLM_BASE_URL)."),
    coherence: bool = typer.Option(True, help="Also score coherence and compare with the coherence labels."),
    n_boot: int = typer.Option(2000, help="Bootstrap replicates for the intervals."),
) -> None:
    """Score the hand-labelled answers with a judge: AUROC, accuracy at 50 and calibration per trait."""
    from personaspace._util import checks, io
    from personaspace.errors import InvalidArgumentError
    from personaspace.judges.validate import load_validation_set, table_lines, validate_judge

    load_validation_set(trait)  # unknown traits fail before any judge is built
    settings: dict[str, Any] = {}
    kind = judge.strip().partition(":")[0].lower()
    if min_mass is not None:
        checks.finite("--min-mass", min_mass, lo=0, hi=1)
        if kind not in ("openai", "hf"):
            raise InvalidArgumentError(f"--min-mass applies to openai: and hf: judges, not {judge!r}")
        settings["min_mass"] = float(min_mass)
    if base_url is not None:
        if kind != "openai":
            raise InvalidArgumentError(f"--base-url applies to openai: judges, not {judge!r}")
        settings["base_url"] = base_url
    checks.non_negative_int("--n-boot", n_boot)
    target: Path | None = checks.writable_dir(out, create=False) if out else None
    report = validate_judge(judge, trait, coherence=coherence, n_boot=n_boot, **settings)
    typer.echo("\n".join(table_lines(report)))
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
        path = target / report_name(report["judge"])
        io.write_json(path, report)
        typer.echo(f"report: {path}")
