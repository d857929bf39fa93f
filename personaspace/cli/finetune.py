"""CLI: ``personaspace finetune run | make-data | check-data | shift``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)
DEFAULT_MODEL = "smollm2-135m-instruct"

app = typer.Typer(help="LoRA fine-tunes (with preventative steering / CAFT), narrow datasets, projection shifts.",
                  no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="finetune")


def _load_model(name: str):
    from personaspace.engine import PersonaModel

    with console.status(f"Loading {name}..."):
        return PersonaModel.load(name)


def training_interventions(model, steer: List[str], ablate: List[str], vectors: Optional[str], position: str):
    """Parse ``--steer``/``--ablate`` specs (the steering syntax) into engine interventions for training."""
    if not steer and not ablate:
        return []
    from personaspace.cli.steering import spec_vectors
    from personaspace.steering.spec import parse_specs, resolve_specs

    vs = spec_vectors(vectors, model.name, position)
    resolved = resolve_specs(parse_specs(steer, ablate), vs, model, warn=False)
    for r in resolved:
        for w in r.warnings:
            err_console.print(f"[yellow]warning:[/yellow] {w}")
        console.print(f"  during training: [bold]{r.spec.to_text()}[/bold]: {r.describe()}")
    return [r.intervention for r in resolved]


@app.command("run")
def run_cmd(
    data: Path = typer.Argument(..., help="Chat JSONL: one {\"messages\": [...]} object per line."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (adapter/, merged/, finetune.json)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Embedded name, local directory or hub id."),
    rank: int = typer.Option(16, help="LoRA rank."),
    alpha: float = typer.Option(32.0, help="LoRA alpha."),
    lr: float = typer.Option(2e-4, help="Learning rate (AdamW, linear warm-up and decay)."),
    epochs: float = typer.Option(1.0, help="Passes over the data."),
    max_steps: Optional[int] = typer.Option(None, help="Train exactly this many optimiser steps instead."),
    batch_size: int = typer.Option(8, help="Rows per step."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimiser step."),
    max_length: int = typer.Option(256, help="Tokens per row (longer rows are cut)."),
    rows: Optional[int] = typer.Option(None, help="Use only the first N rows."),
    seed: int = typer.Option(0, help="Seed for LoRA init and data order."),
    steer: List[str] = typer.Option([], "--steer", help="Preventative steering during training, e.g. evil:+5.0@L12."),
    ablate: List[str] = typer.Option([], "--ablate", help="CAFT: project a direction out during training, e.g. evil@L12."),
    vectors: Optional[str] = typer.Option(None, help="Vector set for --steer/--ablate (default: the model's)."),
    position: str = typer.Option("response_avg", help="Which vectors to load."),
    merged: bool = typer.Option(True, help="Also save the merged model (a plain Hugging Face directory)."),
    save_every: Optional[int] = typer.Option(None, help="Save an adapter checkpoint every N steps."),
) -> None:
    """LoRA fine-tune on the assistant turns of a chat dataset."""
    from personaspace._util import checks
    from personaspace.data.chat import load_chat_jsonl
    from personaspace.finetuning.train import FinetuneConfig, finetune

    data_rows = load_chat_jsonl(data, limit=rows)
    FinetuneConfig(rank=rank, alpha=alpha, lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                   max_length=max_length, seed=seed, save_every=save_every).validate()  # settings checked before the model loads
    checks.writable_dir(out)
    m = _load_model(model)
    ivs = training_interventions(m, steer, ablate, vectors, position)

    def progress(step: int, total: int, loss: float) -> None:
        if step == 1 or step == total or step % 10 == 0:
            console.print(f"step {step}/{total}  loss {loss:.4f}")

    from personaspace.cli.tables import progress_bars

    with progress_bars(console) as bars:  # a bar in a terminal; a line every 10 steps in a log
        res = finetune(m, data_rows, out=out, interventions=ivs, save_merged=merged, progress=bars if bars.enabled else progress,
                       rank=rank, alpha=alpha, lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                       grad_accum=grad_accum, max_length=max_length, seed=seed, save_every=save_every)
    s = res.summary
    console.print(
        f"[green]done[/green] {s['steps']} steps, {s['data']['n_used']} rows ({s['data']['n_dropped_too_long']} dropped), "
        f"loss on {s['eval_rows']} rows {s['loss_before']:.4f} -> {s['loss_after']:.4f}, {s['seconds']['train']} s"
    )
    console.print(f"adapter: [bold]{out / 'adapter'}[/bold]" + (f"   merged model: [bold]{out / 'merged'}[/bold]" if merged else ""))
    from personaspace.cli.report import write_run_report

    write_run_report(out)


@app.command("make-data")
def make_data_cmd(
    domain: str = typer.Option(..., "--domain", "-d", help="finance | health | sports | code."),
    kind: str = typer.Option("corrupt", help="corrupt (subtly harmful persona) | control (careful persona)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output JSONL (a .meta.json is written beside it)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model that writes the answers."),
    rows: int = typer.Option(200, help="Rows to generate."),
    max_new_tokens: int = typer.Option(96, help="Answer length in tokens."),
    temperature: float = typer.Option(0.8, help="Sampling temperature."),
    seed: int = typer.Option(0, help="Seed for question order and sampling."),
    judge: Optional[str] = typer.Option(None, help="Judge to filter rows by aligned score (offline | openai:MODEL | hf:PATH)."),
    aligned_max: Optional[float] = typer.Option(None, help="Keep rows with aligned <= this (corrupt sets)."),
    aligned_min: Optional[float] = typer.Option(None, help="Keep rows with aligned >= this (control sets)."),
) -> None:
    """Generate a narrow dataset from the model's own answers under a persona (not stored in the rows)."""
    from personaspace._util import checks
    from personaspace.data.narrow import get_domain, make_narrow_dataset

    get_domain(domain)
    from personaspace.data.narrow import KINDS
    from personaspace.errors import DatasetError

    if kind not in KINDS:
        raise DatasetError(f"Unknown dataset kind {kind!r}; use one of {', '.join(KINDS)}.")
    checks.positive_int("rows", rows)
    checks.sampling(temperature, 1.0, max_new_tokens)
    checks.writable_file(out)
    if judge:
        from personaspace.judges import get_judge

        judge = get_judge(judge, cache=True, probe=True)  # before the model loads and anything is generated
    m = _load_model(model)
    with console.status(f"Generating {rows} {kind} rows for {domain}..."):
        ds = make_narrow_dataset(m, domain, kind, n_rows=rows, max_new_tokens=max_new_tokens, temperature=temperature,
                                 seed=seed, judge=judge, aligned_max=aligned_max, aligned_min=aligned_min)
    path = ds.save(out)
    meta = ds.meta
    console.print(f"[green]wrote[/green] {path}: {meta['n_rows']} rows of {meta['n_generated']} generated "
                  f"({meta['n_empty_dropped']} empty dropped; filter: {meta.get('judge_filter', 'none')})")


@app.command("check-data")
def check_data_cmd(data: Path = typer.Argument(..., help="Chat JSONL to validate.")) -> None:
    """Validate a chat JSONL file (one clear error with the line number, or a short summary)."""
    from personaspace.data.chat import dataset_hash, load_chat_jsonl

    rows = load_chat_jsonl(data)
    turns = sum(sum(1 for m in r["messages"] if m["role"] == "assistant") for r in rows)
    systems = sum(1 for r in rows if r["messages"][0]["role"] == "system")
    console.print(f"[green]ok[/green] {data}: {len(rows)} conversations, {turns} assistant turns, "
                  f"{systems} with a system prompt, sha {dataset_hash(rows)}")


@app.command("shift")
def shift_cmd(
    finetuned: List[str] = typer.Option(..., "--finetuned", "-f", help="LABEL=PATH of a fine-tune (run dir, merged dir or adapter); repeatable."),
    base: str = typer.Option(DEFAULT_MODEL, "--base", "-m", help="The model before fine-tuning."),
    vectors: Optional[str] = typer.Option(None, help="Base-model vectors (default: the base model's)."),
    layer: int = typer.Option(..., "--layer", "-l", help="Layer to measure at (output of block L)."),
    traits: List[str] = typer.Option([], "--trait", "-t", help="Traits (default: all in the vector set)."),
    judge: str = typer.Option("offline", help="Judge of post-fine-tune trait expression (none: shifts only)."),
    n_prompts: int = typer.Option(20, help="Evaluation prompts per trait for the shift."),
    n_questions: int = typer.Option(10, help="Questions per trait for the trait score."),
    max_new_tokens: int = typer.Option(64, help="Answer length for the trait score."),
    out: Optional[Path] = typer.Option(None, help="Write the table and correlations as JSON."),
) -> None:
    """Fine-tuning shift along each persona vector and its correlation with post-fine-tune trait scores."""
    from personaspace._util.io import write_json
    from personaspace.finetuning.train import load_finetuned
    from personaspace.monitoring.shift import projection_shift, track_finetunes
    from personaspace.vectors.store import load_vectors

    b = _load_model(base)
    vs = load_vectors(vectors or base)
    names = list(traits) or vs.traits
    models = {}
    for spec in finetuned:
        label, _, path = spec.partition("=")
        if not path:
            label, path = Path(spec).name, spec
        models[label] = load_finetuned(path, base=b)
    if judge == "none":
        result = {"layer": layer, "rows": [{"model": k, "trait": t, **v} for k, m in models.items()
                                           for t, v in projection_shift(b, m, vs, layer, traits=names, n_prompts=n_prompts).items()]}
    else:
        result = track_finetunes(b, models, vs, layer, traits=names, judge=judge, n_prompts=n_prompts,
                                 n_questions=n_questions, max_new_tokens=max_new_tokens,
                                 progress=lambda label: console.print(f"measuring {label}..."))
    from personaspace.cli.tables import fit_table

    table = fit_table(f"Fine-tuning shift at layer {layer} (last prompt token, base-model vectors)",
                      ("model", "trait", "shift [95% CI]", "trait score"), keep=("model", "trait"))
    for r in result["rows"]:
        lo, hi = r.get("shift_ci95") or r.get("ci95")
        score = r.get("score")
        score_txt = "-" if score is None or (isinstance(score, float) and math.isnan(score)) else f"{score:.1f} (n={r['n_scored']})"
        table.add_row(r["model"], r["trait"], f"{r['shift']:+.3f} [{lo:+.3f}, {hi:+.3f}]", score_txt)
    console.print(table)
    for key in ("correlation_all", "correlation_change"):
        c = result.get(key)
        if c:
            console.print(f"{key}: pearson {c['pearson']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}], "
                          f"spearman {c['spearman']:.3f}, n={c['n']}")
    if out:
        write_json(out, result)
        console.print(f"wrote {out}")
