"""CLI: ``steer``, ``sweep``, ``monitor``, ``flag``, ``orthogonalize`` and ``export-gguf``.

Every command prints where each vector was read (its row) and where it is applied or measured.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from personaspace._util import checks
from personaspace.errors import DatasetError, InterventionSpecError, InvalidArgumentError

console = Console()
err_console = Console(stderr=True)

DEFAULT_MODEL = "smollm2-135m-instruct"
_VECTORS_HELP = "Vector directory, vector file, or model name to look up (default: the --model name)."
_MODEL_HELP = "Embedded name, local directory or hub id."


def _load_model(name: str):
    from personaspace.engine import PersonaModel

    with console.status(f"Loading {name}..."):
        return PersonaModel.load(name)


def spec_vectors(vectors: Optional[str], model_name: str, position: str = "response_avg"):
    """The vectors steering specs name: ``--vectors`` (or the model's shipped set), where ``svv`` names resolve too."""
    from personaspace.geometry.valence import WithSVV
    from personaspace.vectors.store import load_vectors

    return WithSVV(load_vectors(vectors or model_name, position=position))


def _pick(vectors, name: str):
    from personaspace.steering.spec import SteerSpec, _lookup

    return _lookup(name, vectors, SteerSpec("ablate", name, "all", text=name))


def _warn(messages) -> None:
    for m in dict.fromkeys(messages):
        err_console.print(f"[yellow]warning:[/yellow] {m}")


def _fmt(stat: Optional[dict], digits: int = 1) -> str:
    if not stat:
        return "-"
    mean = stat.get("mean")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return f"n/a (n={stat.get('n', 0)})"
    lo, hi = stat.get("ci95", [None, None])
    extra = f", {stat['n_unscored']} unscored" if stat.get("n_unscored") else ""
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{mean:.{digits}f} (n={stat.get('n')}{extra})"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] n={stat.get('n')}{extra}"


def register(app: typer.Typer) -> None:
    app.command("steer")(steer_cmd)
    app.command("sweep")(sweep_cmd)
    app.command("monitor")(monitor_cmd)
    app.command("flag")(flag_cmd)
    app.command("orthogonalize")(orthogonalize_cmd)
    app.command("export-gguf")(export_gguf_cmd)


# --------------------------------------------------------------------------------------------


def steer_cmd(
    add: List[str] = typer.Option([], "--add", help="NAME[:READ]... e.g. evil:+2.0@L12, evil[L15]:+2@L12, evil:-1@10-14/response."),
    ablate: List[str] = typer.Option([], "--ablate", help="e.g. evil@all, svv[L12]@all, evil@L10-20/response."),
    cap: List[str] = typer.Option([], "--cap", help="e.g. evil<=0.0@L10-20, evil>=-2@L12, -2<=evil<=1@L12."),
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="User prompt (repeatable)."),
    prompts_file: Optional[Path] = typer.Option(None, help="Text file, one prompt per line."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Trait to evaluate (--evaluate) or whose evaluation questions to use when no prompt is given."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=_MODEL_HELP),
    vectors: Optional[str] = typer.Option(None, help=_VECTORS_HELP),
    position: str = typer.Option("response_avg", help="Which reduction's vectors to load."),
    scope: str = typer.Option("all", help="Default positions for specs without /scope: all | prompt | response."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    max_new_tokens: int = typer.Option(64, help="Answer length in tokens."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    seed: int = typer.Option(0, help="Sampling seed (same for steered and unsteered)."),
    baseline: bool = typer.Option(True, help="Also generate unsteered answers to print beside the steered ones."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Judge trait and coherence, KL on neutral prompts, random-vector control."),
    judge: str = typer.Option("offline", help="offline | none | openai:MODEL | hf:NAME_OR_PATH (for --evaluate)."),
    n_questions: int = typer.Option(8, help="Evaluation questions (for --evaluate)."),
    samples: int = typer.Option(1, help="Samples per question (for --evaluate; use with --temperature > 0)."),
    out: Optional[Path] = typer.Option(None, help="Save answers (.json or .jsonl) or, with --evaluate, the report (.json)."),
) -> None:
    """Generate with interventions from saved vectors, beside the unsteered answers.

    A spec names the vector, the row it is read from (default: the layer it is applied at), the
    layers it is applied at, and optionally the positions: see docs/steering.md.
    """
    from personaspace.steering.evaluate import evaluate_steering, steer
    from personaspace.steering.spec import parse_specs, resolve_specs

    specs = parse_specs(add, ablate, cap)
    if not specs:
        raise InterventionSpecError("Nothing to steer with: give at least one --add, --ablate or --cap.")
    checks.sampling(temperature, 1.0, max_new_tokens)
    if out:
        checks.writable_file(out)  # before the work, not when saving after it
    judge_obj = None
    if evaluate:
        if not trait:
            raise InvalidArgumentError("--evaluate needs --trait (its evaluation questions, rubric and judge anchors).")
        from personaspace.judges import get_judge

        judge_obj = get_judge(judge, cache=True, probe=True)  # spec, key and endpoint checked before the model loads
    prompts = list(prompt)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise DatasetError(f"No prompts file at {prompts_file}.")
        prompts += [line.strip() for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not evaluate and not prompts and not trait:
        raise InvalidArgumentError("Give --prompt (repeatable), --prompts-file, or --trait to use its evaluation questions.")
    if trait:
        from personaspace.traits import load_trait

        load_trait(trait)  # a misspelt trait fails before the model loads
    vs = spec_vectors(vectors, model, position)
    m = _load_model(model)
    resolved = resolve_specs(specs, vs, m, scope=scope, warn=False)
    _warn(w for r in resolved for w in r.warnings)
    console.print(f"[bold]model[/bold] {m.name}  ({m.n_layers} layers, layer L = output of block L)")
    for r in resolved:
        console.print(f"  [bold]{r.spec.to_text()}[/bold]: {r.describe()}")
    if evaluate:
        if not trait:
            raise InvalidArgumentError("--evaluate needs --trait (its evaluation questions, rubric and judge anchors).")
        with console.status("Evaluating (steered, unsteered, random control)..."):
            report = evaluate_steering(
                m, trait, resolved, judge=judge_obj, n_questions=n_questions, samples=samples,
                max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, system=system,
            )  # fmt: skip
        console.print(report_table(report))
        if out:
            report.save(str(out))
            console.print(f"report: [bold]{out}[/bold]")
            from personaspace.cli.report import write_run_report

            write_run_report(out)
        return
    if not prompts:
        if not trait:
            raise InvalidArgumentError("Give --prompt (repeatable), --prompts-file, or --trait to use its evaluation questions.")
        from personaspace.traits import load_trait

        prompts = list(load_trait(trait).evaluation_questions[:3])
    with console.status(f"Generating {len(prompts)} answer(s)..."):
        result = steer(
            m, resolved, prompts, system=system, max_new_tokens=max_new_tokens,
            temperature=temperature, seed=seed, baseline=baseline,
        )  # fmt: skip
    for row in result.rows():
        console.rule()
        console.print(f"[bold]prompt[/bold]: {row['prompt']}")
        if "unsteered" in row:
            console.print(f"[dim]unsteered[/dim]: {row['unsteered']}")
        console.print(f"[green]steered[/green]: {row['steered']}")
    if out:
        result.save(str(out))
        console.print(f"answers: [bold]{out}[/bold]")


def report_table(report) -> Table:
    """Conditions as rows: trait, coherence, KL, projection at the read-out layer."""
    r = report.readout
    t = Table(
        title=f"{report.trait} steering on {report.model} (judge: {report.judge}; "
        f"{report.settings['n_questions']} questions x {report.settings['samples_per_question']} samples; "
        f"KL on {report.settings['kl']['prompts']} neutral prompts)"
    )
    for col in ("condition", "interventions (read -> applied)", "trait score", "coherence", "KL (nats)", f"projection @L{r['layer']}"):
        t.add_column(col, overflow="fold")  # as cli.tables.fit_table: wrapped, never cut off
    for row in report.summary_rows():
        proj = row["projection"]
        t.add_row(
            row["condition"], row["interventions"], _fmt(row["trait"]), _fmt(row["coherence"]),
            _fmt(row["kl"], 3) if row["kl"] else "0 (reference)", "-" if proj is None else f"{proj:+.3f}",
        )  # fmt: skip
    for name, d in report.deltas.items():
        proj = d.get("projection")
        t.add_row(
            f"[dim]{name}[/dim]", "[dim]paired difference (same question)[/dim]", _fmt(d["trait"]), _fmt(d["coherence"]),
            "", "-" if proj is None else _fmt(proj, 3),
        )  # fmt: skip
    return t


# --------------------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise InterventionSpecError(f"Cannot read coefficients from {text!r}; use e.g. 0,0.25,0.5,1.") from None


def sweep_cmd(
    trait: str = typer.Option(..., "--trait", "-t", help="Trait (its evaluation questions and judge rubric)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=_MODEL_HELP),
    vectors: Optional[str] = typer.Option(None, help=_VECTORS_HELP),
    vector: Optional[str] = typer.Option(None, help="Vector name in the set (default: the trait name)."),
    position: str = typer.Option("response_avg", help="Which reduction's vectors to load."),
    layers: str = typer.Option("auto", help="auto (about every tenth of the depth from 20 to 80%: 6,9,...,24 of 30) or e.g. 6-24, 8,12,16."),
    coefs: str = typer.Option("0,0.25,0.5,1", help="Comma-separated coefficients."),
    coef_mode: str = typer.Option("relative", help="relative (fraction of the residual norm at the layer) or raw (x stored vector)."),
    scope: str = typer.Option("all", help="all | prompt | response."),
    judge: str = typer.Option("offline", help="offline | none | openai:MODEL | hf:NAME_OR_PATH."),
    n_questions: int = typer.Option(4, help="Evaluation questions per cell."),
    samples: int = typer.Option(1, help="Samples per question (use with --temperature > 0)."),
    max_new_tokens: int = typer.Option(32, help="Answer length per cell."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    seed: int = typer.Option(0),
    kl_prompts: int = typer.Option(4, help="Neutral prompts for the KL metric (1-8)."),
    coherence_min: float = typer.Option(50.0, help="Recommendation: minimum mean coherence."),
    kl_max: float = typer.Option(1.0, help="Recommendation: maximum mean KL (nats)."),
    control: bool = typer.Option(True, help="Test the best cells against a random direction of equal norm (off: nothing is recommended)."),
    control_checks: int = typer.Option(3, help="How many of the best cells within the limits to test against their random control."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/sweep/<model>/<trait>); rerun to resume."),
) -> None:
    """Layers x coefficients: trait, coherence and KL per cell, a recommended cell, heatmap + table."""
    from personaspace.cli.tables import progress_bars
    from personaspace.steering.search import SweepConfig, sweep
    from personaspace.viz.steering import write_sweep_heatmap

    cfg = SweepConfig(
        trait=trait, layers=layers, coefs=_floats(coefs), coef_mode=coef_mode, scope=scope,
        n_questions=n_questions, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature,
        seed=seed, judge=judge, kl_prompts=kl_prompts, coherence_min=coherence_min, kl_max=kl_max, control=control,
        control_checks=control_checks,
    )  # fmt: skip
    if out:
        checks.writable_dir(out)
    from personaspace.judges import get_judge

    judge_obj = get_judge(judge, cache=True, probe=True)  # before the model loads and anything is generated
    from personaspace.traits import load_trait

    tr = load_trait(trait)  # trait and vectors first: a misspelt name fails before the model loads
    vs = spec_vectors(vectors, model, position)
    vec = _pick(vs, vector or tr.name)
    m = _load_model(model)
    _warn(vec.check_compatible(m.d_model, None, m.name))
    run_dir = out or Path("runs") / "sweep" / m.name.replace("/", "--") / (vector or tr.name)
    with progress_bars(console) as bars:
        result = sweep(m, tr, vec, cfg, out=run_dir, judge=judge_obj, progress=bars)
    result.files["heatmap"] = write_sweep_heatmap(result, run_dir)
    console.print(sweep_table(result))
    console.print(recommendation_line(result))
    for name, path in result.files.items():
        console.print(f"{name}: [bold]{path}[/bold]")
    from personaspace.cli.report import write_run_report

    write_run_report(run_dir)


def sweep_table(result) -> Table:
    cfg = result.config
    t = Table(
        title=f"{result.vector['trait']} sweep on {result.model} (judge {result.judge}; {cfg.n_questions} questions x "
        f"{cfg.samples} per cell; read layer = applied layer; coef {cfg.coef_mode})"
    )
    for col in ("layer", "coef", "raw coef", "|added| / |resid|", "trait", "coherence", "KL (nats)", "proj @readout"):
        t.add_column(col, no_wrap=col in ("layer", "coef"), overflow="fold")  # as cli.tables.fit_table: never cut off
    rec = result.recommendation
    for c in result.cells:
        mark = rec is not None and c["layer"] == rec["layer"] and c["coef"] == rec["coef"]
        style = "bold green" if mark else None
        proj = c.get("projection")
        t.add_row(
            f"L{c['layer']}", f"{c['coef']:g}", f"{c['raw_coef']:+.3g}", f"{c['relative_norm']}",
            _fmt(c["trait"]), _fmt(c["coherence"]), _fmt(c["kl"], 3),
            "-" if proj is None else f"{proj:+.2f} (L{c['readout_layer']})", style=style,
        )  # fmt: skip
    b = result.baseline
    t.caption = f"unsteered: trait {_fmt(b['trait'])}, coherence {_fmt(b['coherence'])}. " + (
        f"Recommended: {rec['spec']} (limits: coherence >= {cfg.coherence_min:g}, KL <= {cfg.kl_max:g})."
        if rec
        else "Recommended: None."
    )
    if result.control:
        t.caption += f" Random control at that cell: trait {_fmt(result.control['random']['trait'])}."
    return t


def recommendation_line(result) -> str:
    """The verdict under the sweep table: the recommended cell, or None with the reason."""
    rec = result.recommendation
    head = f"[bold green]Recommended: {rec['spec']}[/bold green]" if rec else "[bold yellow]Recommended: None[/bold yellow]"
    from rich.markup import escape

    return f"{head}. {escape(result.reason or '')}".rstrip()


# --------------------------------------------------------------------------------------------


def monitor_cmd(
    trait: str = typer.Option(..., "--trait", "-t", help="Vector name (and trait, for judging)."),
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="Prompt to monitor (repeatable)."),
    response: List[str] = typer.Option([], "--response", "-r", help="Given response per prompt (else the model answers)."),
    correlate: bool = typer.Option(False, "--correlate", help="Run the prediction experiment: projection before generation vs judged trait."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=_MODEL_HELP),
    vectors: Optional[str] = typer.Option(None, help=_VECTORS_HELP),
    position: str = typer.Option("response_avg", help="Which reduction's vectors to load."),
    layer: Optional[int] = typer.Option(None, help="Layer to measure at (default 60% of depth)."),
    read_layer: Optional[int] = typer.Option(None, help="Vector row to project onto (default: same as --layer)."),
    judge: Optional[str] = typer.Option(None, help="Judge responses (offline | openai:MODEL | hf:...); default offline with --correlate."),
    n_questions: int = typer.Option(10, help="Evaluation questions (--correlate)."),
    n_instructions: int = typer.Option(2, help="Eliciting/suppressing system prompt pairs (--correlate)."),
    max_new_tokens: int = typer.Option(48),
    html: Optional[Path] = typer.Option(None, help="Write a token-level HTML view (one file per prompt: NAME-<i>.html)."),
    out: Optional[Path] = typer.Option(None, help="Save all numbers as JSON."),
) -> None:
    """Project prompts and responses onto a vector, per prompt and per token; or correlate with the judge."""
    from personaspace._util.io import write_json, write_text
    from personaspace.monitoring.projections import monitor, monitor_trait, token_projections
    from personaspace.viz.steering import token_view_html

    checks.positive_int("max_new_tokens", max_new_tokens)
    if not correlate and not prompt:
        raise InvalidArgumentError("Give --prompt (repeatable), or --correlate for the prediction experiment.")
    if response and len(response) != len(prompt):
        raise InvalidArgumentError(f"Got {len(prompt)} --prompt but {len(response)} --response; give one response per prompt or none.")
    if out:
        checks.writable_file(out)
    if html:
        checks.writable_dir(html.parent)
    if correlate or judge:
        from personaspace.judges import get_judge

        judge = get_judge(judge or "offline", cache=True, probe=True)  # before the model loads
    vs = spec_vectors(vectors, model, position)  # vectors first: a misspelt name fails before the model loads
    vec = _pick(vs, trait)
    m = _load_model(model)
    _warn(vec.check_compatible(m.d_model, None, m.name))
    if correlate:
        with console.status("Generating and judging (conditions x questions)..."):
            res = monitor_trait(
                m, trait, vec, layer=layer, read_layer=read_layer, judge=judge or "offline",
                n_questions=n_questions, n_instructions=n_instructions, max_new_tokens=max_new_tokens,
            )  # fmt: skip
        t = Table(title=f"{res.trait}: projection before generation vs judged trait ({res.model}, judge {res.judge}); "
                  f"vector row L{res.read_layer} measured at L{res.layer}")  # fmt: skip
        for col in ("condition", "n", "projection (last prompt token)", "trait score", "r within"):
            t.add_column(col, no_wrap=col == "condition", overflow="fold")
        for c in res.by_condition:
            t.add_row(c["condition"], str(c["n"]), _fmt(c["projection"], 2), _fmt(c["trait"]), f"{c['pearson_within']:.2f}")
        o = res.overall
        t.caption = (
            f"pooled Pearson r = {o['pearson']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}], Spearman {o['spearman']:.3f}, "
            f"n = {o['n']}; mean within-condition r = {res.within['mean_pearson']:.3f}; response-mean projection r = "
            f"{res.response_overall['pearson']:.3f}. Published (7B models): r = 0.76-0.97."
        )
        console.print(t)
        if out:
            write_json(out, res.to_dict())
            console.print(f"results: [bold]{out}[/bold]")
        return
    res = monitor(
        m, vec, prompt, layer=layer, read_layer=read_layer, responses=response or None,
        max_new_tokens=max_new_tokens, judge=judge, trait=trait if judge else None,
    )  # fmt: skip
    t = Table(title=f"{vec.trait} ({vec.position} of {vec.model}) row L{res.read_layer}, measured at L{res.layer} on {res.model}")
    for col in ("prompt", "last prompt token", "response mean", "tokens", "response"):
        t.add_column(col, overflow="fold")
    if judge:
        t.add_column("trait score", overflow="fold")
    for r in res.rows:
        cells = [str(r["prompt"])[:60], f"{r['prompt_last']:+.3f}", "-" if r["response_avg"] is None else f"{r['response_avg']:+.3f}",
                 str(r["n_response_tokens"]), r["response"][:80].replace("\n", " ")]  # fmt: skip
        if judge:
            cells.append("-" if r.get("trait_score") is None else f"{r['trait_score']:.1f}")
        t.add_row(*cells)
    console.print(t)
    if html:
        responses = response or [r["response"] for r in res.rows]
        views = token_projections(m, vec, prompt, responses, layer=res.layer, read_layer=read_layer)
        paths = [html] if len(views) == 1 else [html.with_name(f"{html.stem}-{i}{html.suffix or '.html'}") for i in range(len(views))]
        for view, path in zip(views, paths):
            write_text(path, token_view_html(view, vector_name=f"{vec.trait} ({vec.position} of {vec.model})", model_name=m.name))
            console.print(f"token view: [bold]{path}[/bold]")
    if out:
        write_json(out, res.to_dict())
        console.print(f"results: [bold]{out}[/bold]")


def flag_cmd(
    data: Path = typer.Argument(..., help="Chat JSONL: {\"messages\": [{role, content}, ...]} per line."),
    trait: str = typer.Option(..., "--trait", "-t", help="Vector name."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=_MODEL_HELP),
    vectors: Optional[str] = typer.Option(None, help=_VECTORS_HELP),
    position: str = typer.Option("response_avg", help="Which reduction's vectors to load."),
    layer: Optional[int] = typer.Option(None, help="Layer to measure at (default 60% of depth)."),
    read_layer: Optional[int] = typer.Option(None, help="Vector row (default: same as --layer)."),
    proxy_only: bool = typer.Option(False, help="Skip generating the model's own answers; rank by the cheap proxy."),
    max_new_tokens: int = typer.Option(64, help="Length of the model's own answers."),
    limit: Optional[int] = typer.Option(None, help="Only the first N samples."),
    out: Optional[Path] = typer.Option(None, help="Ranked JSONL (default DATA.flagged-<trait>.jsonl)."),
    top: int = typer.Option(10, help="Rows to print."),
) -> None:
    """Rank training samples by how far they push the model along a persona vector (dP and proxy)."""
    from personaspace.cli.tables import progress_bars
    from personaspace.monitoring.projections import flag_dataset, write_flagged

    if not data.is_file():
        raise DatasetError(f"No dataset file at {data}.")
    if limit is not None:
        checks.positive_int("--limit", limit)
    checks.writable_file(out or data.with_name(f"{data.stem}.flagged-{trait}.jsonl"))
    vs = spec_vectors(vectors, model, position)  # vectors first: a misspelt name fails before the model loads
    vec = _pick(vs, trait)
    m = _load_model(model)
    _warn(vec.check_compatible(m.d_model, None, m.name))
    out = out or data.with_name(f"{data.stem}.flagged-{vec.trait}.jsonl")
    work = out.with_name(f".{out.name}.work")
    with progress_bars(console) as bars:
        res = flag_dataset(
            m, vec, data, layer=layer, read_layer=read_layer, proxy_only=proxy_only, max_new_tokens=max_new_tokens,
            limit=limit, work_file=work, progress=lambda d, n: bars.update("samples", d, n),
        )  # fmt: skip
    write_flagged(res, out)
    work.unlink(missing_ok=True)
    t = Table(title=f"{data.name}: top {min(top, len(res.rows))} by {res.rank_by} ({vec.trait} row L{res.read_layer}, measured at L{res.layer})")
    for col in ("rank", "line", "dP" if not proxy_only else "", "proxy", "prompt", "response"):
        t.add_column(col, overflow="fold")
    for r in res.rows[:top]:
        t.add_row(str(r["rank"]), str(r["line"]), "" if proxy_only else f"{r['delta_p']:+.3f}", f"{r['proxy']:+.3f}",
                  r["prompt"][:40], r["response"][:60].replace("\n", " "))  # fmt: skip
    score = res.score
    t.caption = (
        (f"dataset dP = {_fmt(score, 3)}; " if score else "")
        + f"proxy = {_fmt(res.proxy_score, 3)}"
        + (f"; dP vs proxy r = {res.agreement['pearson']:.2f} (n={res.agreement['n']})" if res.agreement else "")
    )
    console.print(t)
    console.print(f"ranked: [bold]{out}[/bold]")


def orthogonalize_cmd(
    trait: str = typer.Option(..., "--trait", "-t", help="Vector name (e.g. evil, svv)."),
    read_layer: int = typer.Option(..., "--read-layer", "-l", help="Which row of the vector to remove everywhere."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the edited model."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=_MODEL_HELP),
    vectors: Optional[str] = typer.Option(None, help=_VECTORS_HELP),
    position: str = typer.Option("response_avg", help="Which reduction's vectors to load."),
) -> None:
    """Bake the ablation of one direction into the weights (embedding, attention and MLP outputs)."""
    from personaspace.steering.orthogonalization import save_orthogonalized

    checks.writable_dir(out)
    vs = spec_vectors(vectors, model, position)  # vectors first: a misspelt name fails before the model loads
    vec = _pick(vs, trait)
    m = _load_model(model)
    _warn(vec.check_compatible(m.d_model, None, m.name))
    with console.status("Editing and saving..."):
        path = save_orthogonalized(m, vec, out, layer=read_layer)
    console.print(
        f"removed {vec.trait} (row L{vec.layer_index(read_layer)} of {vec.model}) from every residual-stream write of "
        f"{m.name}; saved to [bold]{path}[/bold] (load with --model {path})"
    )


def export_gguf_cmd(
    trait: str = typer.Option(..., "--trait", "-t", help="Vector name."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .gguf file."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name the vectors belong to (for lookup)."),
    vectors: Optional[str] = typer.Option(None, help=_VECTORS_HELP),
    position: str = typer.Option("response_avg", help="Which reduction's vectors to load."),
    layers: Optional[str] = typer.Option(None, help="Layers to write, e.g. 10-20 (default: every layer from 1)."),
    coef: float = typer.Option(1.0, help="Scale baked into the file."),
    model_hint: Optional[str] = typer.Option(None, help="controlvector.model_hint (informational)."),
) -> None:
    """Write a llama.cpp control vector: our layer L (output of block L) -> tensor direction.L."""
    from personaspace.engine.layers import resolve_layers
    from personaspace.vectors.formats import export_gguf_control_vector

    checks.writable_file(out)
    checks.finite("coef", coef)
    vs = spec_vectors(vectors, model, position)
    vec = _pick(vs, trait)
    chosen = None
    if layers:
        chosen = resolve_layers(layers.replace("L", ""), max(vec.layers) + 1)
    path = export_gguf_control_vector(vec, out, layers=chosen, coef=coef, model_hint=model_hint)
    console.print(
        f"{vec.trait} ({vec.position} of {vec.model}) x {coef:g} -> [bold]{path}[/bold]; layers "
        f"{chosen if chosen else 'all from 1'} (row L is added at block L's output; llama-cli --control-vector {path})"
    )
