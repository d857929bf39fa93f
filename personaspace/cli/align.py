"""CLI: ``personaspace align lpa | sft | eval | compare`` (Latent Personality Alignment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

console = Console()
DEFAULT_MODEL = "smollm2-135m-instruct"

app = typer.Typer(
    help="Latent Personality Alignment: latent adversarial training on trait statements, its SFT ablation, evaluation.",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="align")


# ---- shared options ---------------------------------------------------------------------------------

MODEL = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Embedded name, local directory or hub id.")
TRAITS = typer.Option("evil,sycophancy,hallucination", help="Negative traits whose harmful-pole statements are trained against.")
ANCHORS = typer.Option("openness,conscientiousness,extraversion,agreeableness", help="Positive traits whose statements anchor the KL term.")
MODE = typer.Option("statements", help="statements | instructions (the traits' contrast system prompts).")
STATEMENTS = typer.Option(None, help="Your own statements: .txt (one negative per line) or .jsonl/.csv with statement,polarity.")
TRIPLES = typer.Option(None, help="Generic LAT data instead of statements: .jsonl/.csv with prompt,safe,unsafe.")
HOLDOUT = typer.Option(0.25, help="Fraction of each trait's statements held out for evaluation.")
SEED = typer.Option(0, help="Seed for the split, batches and LoRA init.")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _data(traits: str, anchors: str, mode: str, statements: Optional[Path], triples: Optional[Path], holdout: float, seed: int):
    from personaspace.align.data import LPAData, load_triples, lpa_data

    if triples is not None:
        rows = load_triples(triples)
        return LPAData(rows, [], source={"triples_file": str(triples), "n": len(rows)})
    return lpa_data(_split(traits), _split(anchors), mode=mode, statements_file=statements, holdout=holdout, seed=seed)


def _model(name: str):
    from personaspace.engine import PersonaModel

    with console.status(f"Loading {name}..."):
        return PersonaModel.load(name)


def _train_config(**kw: Any):
    from personaspace._util import checks
    from personaspace.align.training import TrainConfig

    for name, value in kw.items():  # NaN or inf in a rate, radius or weight would train garbage silently
        if isinstance(value, float):
            checks.finite(f"--{name.replace('_', '-')}", value)
    return TrainConfig(**{k: v for k, v in kw.items() if v is not None})


def _attack_lrs(attack_lr: Optional[str]) -> Optional[tuple[float, ...]]:
    """``--attack-lr 1e-3,1e-2`` as numbers, or one clear error (checked before the model loads)."""
    if not attack_lr:
        return None
    from personaspace._util import checks
    from personaspace.errors import InvalidArgumentError

    try:
        lrs = tuple(float(x) for x in attack_lr.split(",") if x.strip())
    except ValueError:
        raise InvalidArgumentError(f"Cannot read --attack-lr {attack_lr!r}; use comma-separated numbers such as 1e-3,1e-2.") from None
    if not lrs:
        raise InvalidArgumentError(f"Cannot read --attack-lr {attack_lr!r}; use comma-separated numbers such as 1e-3,1e-2.")
    return tuple(checks.finite("--attack-lr", x, lo=0, lo_open=True) for x in lrs)


def _progress(total: int):
    def show(step: int, entry: dict) -> None:
        parts = "  ".join(f"{k}={v}" for k, v in entry.items() if k != "step")
        console.print(f"  step {step}/{total}  {parts}")

    return show


def _train(method: str, model: str, out: Path, data, cfg) -> None:
    from personaspace._util import checks
    from personaspace.align.training import train

    checks.writable_dir(out)
    m = _model(model)
    counts = data.counts()
    console.print(
        f"[bold]{method}[/bold] on {m.name}: {counts['train_triples']} training triples, {counts['train_anchors']} anchors "
        f"({counts['test_triples']} held out); {cfg.outer_steps} outer steps x {cfg.model_steps} model updates"
        + (f", {cfg.pgd_steps} PGD steps each" if method == "lpa" else "")
    )
    from personaspace.cli.tables import progress_bars

    with progress_bars(console) as bars:  # a bar in a terminal; a line per step in a log
        result = train(m, data.train, data.anchors, cfg, method=method, data_source={**data.source, "counts": counts},
                       progress=bars if bars.enabled else _progress(cfg.outer_steps))
    result.save(out)
    from personaspace.cli.report import write_run_report

    write_run_report(out)
    c = result.counts
    console.print(
        f"[green]saved[/green] {out}  (adapter/ + train.json)  trained on {c['triples_used']} triples and {c['anchors_used']} anchors, "
        f"{c['model_updates']} updates, {result.seconds:.0f} s"
    )


# ---- commands ---------------------------------------------------------------------------------------


@app.command("lpa")
def lpa_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: adapter/ (peft) and train.json."),
    model: str = MODEL,
    traits: str = TRAITS,
    anchor_traits: str = ANCHORS,
    mode: str = MODE,
    statements: Optional[Path] = STATEMENTS,
    triples: Optional[Path] = TRIPLES,
    holdout: float = HOLDOUT,
    outer_steps: Optional[int] = typer.Option(None, help="Outer steps (attack + defence), default 8 (published: ~12)."),
    batch_size: Optional[int] = typer.Option(None, help="Triples per outer step, default 4."),
    anchor_batch_size: Optional[int] = typer.Option(None, help="Anchors per outer step, default 4."),
    pgd_steps: Optional[int] = typer.Option(None, help="Adversary steps per outer step, default 8 (published: 16)."),
    pgd_lr: Optional[float] = typer.Option(None, help="Adversary Adam learning rate, default 1e-3."),
    model_steps: Optional[int] = typer.Option(None, help="Defence updates per outer step, default 2 (published: 4)."),
    lr: Optional[float] = typer.Option(None, help="LoRA learning rate, default 8e-5."),
    eps: Optional[float] = typer.Option(None, help="Per-token L2 radius; default 6.0 * sqrt(d_model / 4096)."),
    layers: Optional[str] = typer.Option(None, help="Perturbed layers, e.g. 'embed,6,12,18,24' (default: embed + 4 evenly spaced)."),
    lora_r: Optional[int] = typer.Option(None, help="LoRA rank, default 64."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha, default = rank."),
    kl: Optional[float] = typer.Option(None, help="Weight of the KL anchor, default 1."),
    away: Optional[float] = typer.Option(None, help="Weight of the away term, default 1."),
    seed: int = SEED,
) -> None:
    """Train a LoRA adapter with Latent Personality Alignment (targeted latent adversarial training)."""
    data = _data(traits, anchor_traits, mode, statements, triples, holdout, seed)
    cfg = _train_config(outer_steps=outer_steps, batch_size=batch_size, anchor_batch_size=anchor_batch_size, pgd_steps=pgd_steps,
                        pgd_lr=pgd_lr, model_steps=model_steps, lr=lr, eps=eps, layers=layers, lora_r=lora_r, lora_alpha=lora_alpha,
                        kl=kl, away=away, seed=seed)
    _train("lpa", model, out, data, cfg)


@app.command("sft")
def sft_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: adapter/ (peft) and train.json."),
    model: str = MODEL,
    traits: str = TRAITS,
    anchor_traits: str = ANCHORS,
    mode: str = MODE,
    statements: Optional[Path] = STATEMENTS,
    triples: Optional[Path] = TRIPLES,
    holdout: float = HOLDOUT,
    outer_steps: Optional[int] = typer.Option(None, help="Batches, default 8 (same as lpa)."),
    batch_size: Optional[int] = typer.Option(None, help="Triples per batch, default 4."),
    anchor_batch_size: Optional[int] = typer.Option(None, help="Anchors per batch, default 4."),
    model_steps: Optional[int] = typer.Option(None, help="Updates per batch, default 2 (same as lpa)."),
    lr: Optional[float] = typer.Option(None, help="LoRA learning rate, default 8e-5."),
    lora_r: Optional[int] = typer.Option(None, help="LoRA rank, default 64."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha, default = rank."),
    kl: Optional[float] = typer.Option(None, help="Weight of the KL anchor, default 1."),
    seed: int = SEED,
) -> None:
    """The ablation: plain SFT towards the safe completions on the same data, same updates, no adversary."""
    data = _data(traits, anchor_traits, mode, statements, triples, holdout, seed)
    cfg = _train_config(outer_steps=outer_steps, batch_size=batch_size, anchor_batch_size=anchor_batch_size, model_steps=model_steps,
                        lr=lr, lora_r=lora_r, lora_alpha=lora_alpha, kl=kl, seed=seed)
    _train("sft", model, out, data, cfg)


def _eval_config(attack_steps, attack_eps, attack_lr, attack_rows, generate, judge, vectors, model_name, utility_prompts=None):
    from personaspace.align.comparison import EvalConfig

    vs = None
    if vectors:
        from personaspace.vectors.store import load_vectors

        vs = load_vectors(model_name if vectors == "auto" else vectors)
    lrs = _attack_lrs(attack_lr)
    kw = dict(attack_steps=attack_steps, attack_eps=attack_eps, attack_lrs=lrs, attack_rows=attack_rows, generate=generate, judge=judge,
              utility_prompts=utility_prompts)
    return EvalConfig(vectors=vs, **{k: v for k, v in kw.items() if v is not None})


ATTACK_STEPS = typer.Option(None, help="PGD steps of the evaluation attacks, default 8.")
ATTACK_EPS = typer.Option(None, help="Radius of the evaluation attacks (default: the training radius).")
ATTACK_LR = typer.Option(None, help="Comma-separated step sizes, one attack each; default '1e-3,1e-2' (training strength, full radius).")
ATTACK_ROWS = typer.Option(None, help="Statements attacked: held-out first, then unseen-trait ones; default 16.")
GENERATE = typer.Option(None, help="Also generate answers to N harmful + N benign requests and judge refusals.")
JUDGE = typer.Option(None, help="Judge for --generate: offline | none | openai:MODEL | hf:NAME.")
VECTORS = typer.Option(None, help="Persona vectors for projection shifts: 'auto' (the model's) or a path.")
UTILITY_PROMPTS = typer.Option(None, help="Neutral prompts for the utility check (default: all 24 built-in).")
REQUESTS = typer.Option(None, help="Your own request set (.jsonl/.csv with text,label[,category]); default: built-in 110 + 110.")


@app.command("eval")
def eval_cmd(
    model: str = MODEL,
    adapter: Optional[Path] = typer.Option(None, help="Run directory or adapter directory to evaluate (default: the base model)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the full report here (JSON)."),
    requests: Optional[Path] = REQUESTS,
    traits: str = TRAITS,
    anchor_traits: str = ANCHORS,
    mode: str = MODE,
    holdout: float = HOLDOUT,
    attack_steps: Optional[int] = ATTACK_STEPS,
    attack_eps: Optional[float] = ATTACK_EPS,
    attack_lr: Optional[str] = ATTACK_LR,
    attack_rows: Optional[int] = ATTACK_ROWS,
    generate: Optional[int] = GENERATE,
    judge: Optional[str] = JUDGE,
    vectors: Optional[str] = VECTORS,
    utility_prompts: Optional[int] = UTILITY_PROMPTS,
    seed: int = SEED,
) -> None:
    """Harm probe, statement preference, attack robustness and utility of a model (with or without an adapter)."""
    from personaspace._util import checks
    from personaspace._util.io import write_json
    from personaspace.align.comparison import evaluate_model, preflight, table_markdown, utility_answers
    from personaspace.align.data import load_requests
    from personaspace.engine.adapters import load_adapter

    _attack_lrs(attack_lr)  # a typo here fails before the model loads
    base = _model(model)
    data = _data(traits, anchor_traits, mode, None, None, holdout, seed)
    reqs = load_requests(requests)
    cfg = _eval_config(attack_steps, attack_eps, attack_lr, attack_rows, generate, judge, vectors, base.name, utility_prompts)
    preflight(cfg)  # judge and sizes checked before any work
    if out is not None:
        checks.writable_file(out)
    target = load_adapter(adapter, base).model if adapter is not None else base
    label = "adapter" if adapter is not None else "base"
    with console.status("Evaluating..."):
        answers = utility_answers(base, cfg)
        report = evaluate_model(target, base, data, reqs, answers, cfg)
    from personaspace.cli.tables import markdown_tables

    for table in markdown_tables(table_markdown({label: {"eval": report, "counts": _counts(adapter)}})):
        console.print(table)
    if out is not None:
        write_json(out, {"model": model, "adapter": str(adapter) if adapter else None, "eval": report})
        console.print(f"[green]wrote[/green] {out}")
        from personaspace.cli.report import write_run_report

        write_run_report(out)


def _counts(adapter: Optional[Path]):
    if adapter is None:
        return None
    from personaspace.align.training import TRAIN_FILE

    path = Path(adapter) / TRAIN_FILE
    return json.loads(path.read_text())["counts"] if path.exists() else None


@app.command("compare")
def compare_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Directory: lpa/, sft/, compare.json, compare.md."),
    model: str = MODEL,
    traits: str = TRAITS,
    anchor_traits: str = ANCHORS,
    mode: str = MODE,
    statements: Optional[Path] = STATEMENTS,
    holdout: float = HOLDOUT,
    requests: Optional[Path] = REQUESTS,
    outer_steps: Optional[int] = typer.Option(None, help="Outer steps for both methods, default 8."),
    pgd_steps: Optional[int] = typer.Option(None, help="LPA adversary steps per outer step, default 8."),
    model_steps: Optional[int] = typer.Option(None, help="Updates per outer step for both methods, default 2."),
    batch_size: Optional[int] = typer.Option(None, help="Triples per outer step, default 4."),
    lr: Optional[float] = typer.Option(None, help="LoRA learning rate, default 8e-5."),
    attack_steps: Optional[int] = ATTACK_STEPS,
    attack_eps: Optional[float] = ATTACK_EPS,
    attack_lr: Optional[str] = ATTACK_LR,
    attack_rows: Optional[int] = ATTACK_ROWS,
    generate: Optional[int] = GENERATE,
    judge: Optional[str] = JUDGE,
    vectors: Optional[str] = VECTORS,
    utility_prompts: Optional[int] = UTILITY_PROMPTS,
    seed: int = SEED,
) -> None:
    """Base vs LPA vs plain SFT on the same statements, with the number of training examples each used."""
    from personaspace._util import checks
    from personaspace.align.comparison import compare
    from personaspace.align.data import load_requests
    _attack_lrs(attack_lr)  # a typo here fails before the model loads
    checks.writable_dir(out)
    data = _data(traits, anchor_traits, mode, statements, None, holdout, seed)
    cfg = _train_config(outer_steps=outer_steps, pgd_steps=pgd_steps, model_steps=model_steps, batch_size=batch_size, lr=lr, seed=seed)
    base = _model(model)
    ecfg = _eval_config(attack_steps, attack_eps, attack_lr, attack_rows, generate, judge, vectors, base.name, utility_prompts)
    from personaspace.cli.tables import progress_bars

    with progress_bars(console) as bars:  # bars in a terminal; a line per stage and step in a log
        report = compare(base, data, cfg, ecfg, out=out, requests=load_requests(requests),
                         progress=bars if bars.enabled else lambda msg: console.print(f"  {msg}"))
    from personaspace.cli.tables import markdown_tables

    for table in markdown_tables(report["table"]):
        console.print(table)
    console.print(f"[green]wrote[/green] {out / 'compare.md'} and {out / 'compare.json'}")
    from personaspace.cli.report import write_run_report

    write_run_report(out)
