"""One ``report.html`` per run: settings, headline numbers, figures and examples, in a single file that
opens offline (plotly.js embedded once, no network).

:func:`write_report` reads what a run wrote and draws it; :func:`detect_kind` says what kind of run a
path holds, from its files (the keys of :data:`KINDS`):

- ``extract`` (``personaspace extract``): ``config.json`` and ``generations.jsonl``;
- ``sweep`` (``personaspace sweep``): ``sweep.json``;
- ``em_eval`` (``personaspace em eval --out DIR``): ``answers.jsonl`` and ``summary.json``;
- ``experiment`` (``personaspace experiment em``): ``results.json`` and ``config.json``;
- ``align_compare`` / ``align_train`` (``personaspace align compare`` / ``lpa``, ``sft``): ``compare.json`` /
  ``train.json``;
- ``finetune`` (``personaspace finetune``): ``finetune.json``;
- ``steer`` / ``align_eval`` (``steer --evaluate --out FILE.json`` / ``align eval --out FILE.json``): the JSON
  file itself.

A run directory gets ``report.html`` inside it; a run written as one JSON file (``steer --evaluate``,
``align eval``) gets ``FILE.html`` beside it. ``personaspace report PATH`` regenerates either.

An extraction report also shows the token projection view of a few kept answers (the view of
``personaspace monitor --html``), which needs the model: pass ``model=`` (a loaded
:class:`~personaspace.engine.PersonaModel`), or it is loaded by the name in ``config.json``;
``token_views=0`` skips it.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from personaspace.errors import CorruptFileError, PersonaspaceError, RunDirectoryError
from personaspace.viz.html import figure_html, write_page

__all__ = ["REPORT_FILE", "KINDS", "detect_kind", "report_path", "write_report"]

REPORT_FILE = "report.html"

#: Each kind of run a report is written for, and what makes it.
KINDS: dict[str, str] = {
    "extract": "persona-vector extraction (personaspace extract)",
    "sweep": "steering sweep, layers x coefficients (personaspace sweep)",
    "em_eval": "emergent-misalignment evaluation (personaspace em eval)",
    "experiment": "end-to-end emergent-misalignment experiment (personaspace experiment em)",
    "align_compare": "base vs LPA vs SFT comparison (personaspace align compare)",
    "align_train": "Latent Personality Alignment or SFT training run (personaspace align lpa | sft)",
    "finetune": "LoRA fine-tune (personaspace finetune)",
    "steer": "steering evaluation (personaspace steer --evaluate --out FILE.json)",
    "align_eval": "alignment evaluation (personaspace align eval --out FILE.json)",
}

CSS = """
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 0.8em 0 1.2em; }
.card { border: 1px solid #d8dee4; border-radius: 6px; padding: 0.6em 0.9em; min-width: 13em; max-width: 24em;
        flex: 1 1 13em; background: #fbfcfd; }
.card .label { color: #555; font-size: 0.85em; }
.card .value { font-size: 1.45em; font-weight: 600; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.card .value.long { font-size: 1.05em; }
.card .note { color: #666; font-size: 0.8em; }
.pair { border: 1px solid #e1e4e8; border-radius: 6px; margin: 0.8em 0; padding: 0.5em 0.8em; }
.pair .head { font-size: 0.9em; color: #444; }
.pair .sides { display: grid; grid-template-columns: 1fr 1fr; gap: 0.8em; }
.answer { white-space: pre-wrap; font-size: 0.92em; background: #f6f8fa; padding: 0.4em 0.6em; border-radius: 4px;
          max-height: 16em; overflow-y: auto; }
.system { color: #666; font-size: 0.82em; font-style: italic; }
.kept { color: #1a7f37; font-weight: 600; } .dropped { color: #b35900; font-weight: 600; }
iframe.tokens { width: 100%; border: 1px solid #e1e4e8; border-radius: 4px; height: 22em; margin: 0.4em 0; }
details > summary { cursor: pointer; color: #0b62a4; margin: 0.4em 0; }
td.wrap { max-width: 38em; white-space: pre-wrap; }
.columns { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
.columns > .scroll { flex: 1 1 30em; } .columns table { width: 100%; } .columns td { overflow-wrap: anywhere; }
.columns td:first-child { white-space: nowrap; }
.scroll { max-width: 100%; overflow-x: auto; }
nav.toc { font-size: 0.9em; } nav.toc a { margin-right: 1em; }
"""

# Legends above the plot area, left-aligned, never over the curves.
_LEGEND_TOP = dict(orientation="h", yanchor="bottom", y=1.02, x=0, xanchor="left")

# A token view is a whole page; it is shown in an iframe (srcdoc: nothing is loaded) sized to its content.
_FIT_IFRAME = "this.style.height=(this.contentDocument.documentElement.scrollHeight+8)+'px'"


# ---------------------------------------------------------------------------------------------
# small HTML helpers


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, digits: int = 3) -> str:
    """A number at ``digits`` significant digits; ints, strings and None as they are."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def _compact(v: Any, digits: int = 3) -> str:
    """A short one-line text of any JSON value (numbers rounded, pairs of numbers as intervals)."""
    if isinstance(v, Mapping):
        if "mean" in v and ("ci95" in v or "n" in v):
            return _stat(v, digits)
        return "; ".join(f"{k.replace('_', ' ')} {_compact(x, digits)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        if len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return f"[{_num(v[0], digits)}, {_num(v[1], digits)}]"
        if len(v) > 12:
            return f"{len(v)} values: " + ", ".join(_num(x, digits) for x in v[:6]) + ", ..."
        return ", ".join(_compact(x, digits) for x in v)
    return _num(v, digits)


def _stat(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``mean [lo, hi] (n=...)`` of a statistics dict (mean, ci95, n)."""
    if not s:
        return "-"
    mean = s.get("mean")
    text = _num(mean, digits)
    ci = s.get("ci95")
    if ci and ci[0] is not None and not (isinstance(ci[0], float) and math.isnan(ci[0])):
        text += f" [{_num(ci[0], digits)}, {_num(ci[1], digits)}]"
    if s.get("n") is not None:
        text += f" (n={s['n']})"
    return text


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw``; numeric cells right-aligned."""
    def cell(tag: str, x: Any) -> str:
        text = str(x) if raw else _e(x if isinstance(x, str) else _num(x))
        cls = ' class="num"' if isinstance(x, (int, float)) and not isinstance(x, bool) else ""
        return f"<{tag}{cls}>{text}</{tag}>"

    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell("td", x) for x in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table>{head}{body}</table></div>'


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and len(v) <= 12 and not ("mean" in v and "ci95" in v):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _settings_table(d: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    """Every setting (nested ones as ``a.b``), in two tables side by side when there are many."""
    skip = set(skip)
    rows = [(k, _compact(v, 4)) for k, v in _flatten(d) if k.split(".")[0] not in skip]
    if len(rows) <= 10:
        return _table(rows, ("setting", "value"))
    half = (len(rows) + 1) // 2
    return ('<div class="columns">' + _table(rows[:half], ("setting", "value")) + _table(rows[half:], ("setting", "value"))
            + "</div>")


def _cards(cards: Sequence[tuple[str, str, str]]) -> str:
    """Headline numbers: (label, value, note) each."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{_e(label)}</div><div class="value{" long" if len(value) > 22 else ""}">{_e(value)}</div>'
        f'<div class="note">{_e(note)}</div></div>'
        for label, value, note in cards
    ) + "</div>"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


@dataclasses.dataclass
class _Report:
    """What a kind's builder returns: a title, the headline and settings, and the sections in order."""

    title: str
    subtitle: str = ""
    headline: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    sections: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, title: str, body: str) -> None:
        self.sections.append((title, body))

    def body(self, kind: str, path: Path, seconds: float) -> str:
        parts = [f'<p class="muted">{_e(self.subtitle)}</p>' if self.subtitle else ""]
        parts.append(
            f'<p class="small muted">{_e(KINDS[kind])}: <code>{_e(path)}</code>; report written '
            f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))} in {seconds:.1f} s; regenerate with "
            f"<code>personaspace report {_e(path)}</code>.</p>"
        )
        for note in self.notes:
            parts.append(f'<p class="small">Note: {_e(note)}</p>')
        names = ["Headline numbers", "Settings"] + [t for t, _ in self.sections]
        parts.append('<nav class="toc">' + "".join(f'<a href="#{_slug(n)}">{_e(n)}</a>' for n in names) + "</nav>")
        parts.append(f'<h2 id="{_slug(names[0])}">Headline numbers</h2>' + _cards(self.headline))
        parts.append(f'<h2 id="{_slug(names[1])}">Settings</h2>' + _settings_table(self.settings))
        for title, body in self.sections:
            parts.append(f'<h2 id="{_slug(title)}">{_e(title)}</h2>\n{body}')
        return "\n".join(p for p in parts if p)


def _figure(fig: Any, note: str = "") -> str:
    extra = f'<p class="small muted">{_e(note)}</p>' if note else ""
    return f'<div class="figure">{figure_html(fig)}</div>{extra}'


def _markdown(text: str) -> str:
    """The Markdown the run files use (headings, pipe tables, lists, paragraphs, `code`) as HTML."""
    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)

    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            body = [r for r in block[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r if c)]
            out.append(
                "<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in block[0]) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>"
            )
            continue
        heading = re.match(r"(#{1,4})\s+(.*)", line)
        if heading:
            level = min(4, len(heading.group(1)) + 2)  # the page has h1 and h2 already
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append("<li>" + inline(re.sub(r"^\s*[-*]\s+", "", lines[i])) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# reading run files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirectoryError(f"{path.parent} has no {path.name}: the run did not finish; rerun its command to complete it.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}).") from None


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def detect_kind(path: str | os.PathLike) -> str:
    """The kind of run at ``path`` (a key of :data:`KINDS`), from the files it holds.

    A path that holds no run raises :class:`~personaspace.errors.RunDirectoryError` naming what was
    looked for.
    """
    p = Path(path).expanduser()
    if p.is_file():
        data = _json_or_none(p) if p.suffix in (".json", ".jsonl") or p.stat().st_size < 50_000_000 else None
        if isinstance(data, dict) and "conditions" in data and "deltas" in data:
            return "steer"
        if isinstance(data, dict) and "eval" in data and "model" in data:
            return "align_eval"
        if p.name in ("summary.json", "config.json", "sweep.json", "results.json", "compare.json", "train.json",
                      "finetune.json", "generations.jsonl"):
            return detect_kind(p.parent)
        raise RunDirectoryError(
            f"{p} is not a run directory, nor a report file of `steer --evaluate --out` or `align eval --out`; "
            "give the directory a run wrote (e.g. runs/extract/<model>/<trait>-<key>)."
        )
    if not p.is_dir():
        raise RunDirectoryError(f"There is no run directory at {p}.")
    has = {f.name for f in p.iterdir()}
    if {"config.json", "generations.jsonl"} <= has:
        return "extract"
    if "sweep.json" in has or {"sweep-key.json", "cells.jsonl"} <= has:
        return "sweep"
    if "summary.json" in has and "answers.jsonl" in has:
        return "em_eval"
    if "results.json" in has and "config.json" in has:
        return "experiment"
    if "compare.json" in has:
        return "align_compare"
    if "train.json" in has:
        return "align_train"
    if "finetune.json" in has:
        return "finetune"
    raise RunDirectoryError(
        f"{p} is not a run directory: it holds none of the files a run writes (extraction: config.json and "
        "generations.jsonl; sweep: sweep.json; em eval: answers.jsonl and summary.json; experiment: results.json; "
        "align: compare.json or train.json; finetune: finetune.json)."
    )


def report_path(path: str | os.PathLike) -> Path:
    """Where the report of the run at ``path`` goes: ``DIR/report.html``, or ``FILE.html`` beside a JSON run file."""
    p = Path(path).expanduser()
    if not p.is_file():
        return p / REPORT_FILE
    return p.with_suffix(".report.html") if p.suffix == ".html" else p.with_suffix(".html")  # never over the run file


def write_report(
    run_dir: str | os.PathLike,
    *,
    model: Any = None,
    trait: Any = None,
    token_views: int = 2,
    examples: int = 4,
) -> Path:
    """Write the run's ``report.html`` (one self-contained file that opens offline); its path.

    ``run_dir`` is a run directory (or the JSON file of ``steer --evaluate --out`` / ``align eval
    --out``); its kind comes from its files (:func:`detect_kind`). For extraction runs, ``examples``
    kept and dropped pairs are shown with their judge scores, and ``token_views`` kept pairs in the
    token projection view (computed with ``model``, else the model named in ``config.json`` is loaded;
    0 skips it). ``trait`` is the trait (name, YAML path or Trait) when it is not a built-in name.
    """
    started = time.perf_counter()
    path = Path(run_dir).expanduser()
    kind = detect_kind(path)
    if kind == "extract":
        report = _extract_report(path, model=model, trait=trait, token_views=token_views, examples=examples)
    else:
        report = _BUILDERS[kind](path)
    body = report.body(kind, path, time.perf_counter() - started)
    return write_page(report_path(path), report.title, body, inline_plotly=True, css=CSS)


# ---------------------------------------------------------------------------------------------
# extraction


_SEPARATION_LABELS = {
    "separation": "questions held out (the contrast instructions are shared by every fold)",
    "separation_all_pairs": "every pair, kept or not (no judge filter); questions held out",
    "separation_heldout_instructions": "instruction pairs and questions held out",
    "separation_answer_only": "kept answers re-read without the system prompt; instruction pairs and questions held out",
}
_REASON_TEXT = {
    "no_score": "a score is missing (judge error)",
    "pos_too_low": "the pos answer's trait score is below the pos threshold",
    "neg_too_high": "the neg answer's trait score is at or above the neg threshold",
    "incoherent": "an answer is below the coherence threshold",
}


def _extract_trait(spec: Any, cfg: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The run's trait, when it can be found with the content the run was made from; else a note."""
    from personaspace.traits import load_trait

    try:
        trait = load_trait(spec) if isinstance(spec, (str, Path)) else spec
    except PersonaspaceError as exc:
        return None, f"the trait '{spec}' was not found ({exc.message}); prompts are not shown"
    recorded = cfg.get("trait_hash")
    if recorded and getattr(trait, "content_hash", recorded) != recorded:
        return None, (f"the trait '{cfg.get('trait')}' was edited since this run (its content hash differs); "
                      "prompts are not shown")
    return trait, None


def _separation_section(summary: Mapping[str, Any]) -> str:
    """One figure per ``separation*`` entry of the summary (per position, per layer), with its notes."""
    import plotly.graph_objects as go

    parts = []
    for key, value in summary.items():
        if not key.startswith("separation") or not isinstance(value, Mapping):
            continue
        curves = {pos: e for pos, e in value.items() if isinstance(e, Mapping) and e.get("per_layer")}
        described = {str(e.get(f)) for e in value.values() if isinstance(e, Mapping) for f in ("held_out",) if e.get(f)}
        label = _SEPARATION_LABELS.get(key) or ("held out: " + ", ".join(sorted(described)) if described else key.replace("_", " "))
        parts.append(f"<h3><code>{_e(key)}</code>: {_e(label)}</h3>")
        if curves:
            fig = go.Figure()
            for pos, e in curves.items():
                fig.add_trace(go.Scatter(x=list(range(len(e["per_layer"]))), y=e["per_layer"], mode="lines+markers",
                                         name=pos, marker=dict(size=5)))
            fig.add_hline(y=0.5, line_dash="dot", line_color="grey")
            fig.update_layout(height=340, margin=dict(t=50, b=45, l=60, r=20), template="plotly_white", showlegend=True,
                              xaxis_title="layer (output of block L)", yaxis_title="held-out AUROC",
                              yaxis_range=[min(0.0, *(min(e["per_layer"]) for e in curves.values())) - 0.02, 1.02],
                              legend=_LEGEND_TOP)
            parts.append(_figure(fig))
        rows = []
        for pos, e in value.items():
            if not isinstance(e, Mapping):
                continue
            rows.append([pos] + [_compact(v) for k, v in e.items() if k != "per_layer"])
        keys = next((list(k for k in e if k != "per_layer") for e in value.values() if isinstance(e, Mapping)), [])
        if rows and all(len(r) == len(keys) + 1 for r in rows):
            parts.append(_table(rows, ["position"] + [k.replace("_", " ") for k in keys]))
        elif rows:
            parts.append(_table([[pos, _compact(e)] for pos, e in value.items()], ("position", "entry")))
    if not parts:
        return '<p class="muted">The summary has no separation entries.</p>'
    return "\n".join(parts)


def _norms_figure(norms: Mapping[str, Sequence[float]]) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for pos, values in norms.items():
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=list(values), mode="lines+markers", name=pos, marker=dict(size=5)))
    fig.update_layout(height=320, margin=dict(t=50, b=45, l=60, r=20), template="plotly_white", showlegend=True,
                      xaxis_title="layer (output of block L)", yaxis_title="|pos mean - neg mean|",
                      legend=_LEGEND_TOP)
    return _figure(fig, "L2 norm of the unnormalised mean difference per layer; it grows with the residual stream's own norm.")


def _score_scatter(pairs: Sequence[tuple[Any, Any, str]], scores: Mapping[int, dict], cfg: Any) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    groups: dict[str, list[tuple[Any, Any]]] = {}
    for pos, neg, status in pairs:
        groups.setdefault(status, []).append((pos, neg))
    colours = {"kept": "#1a7f37", "pos_too_low": "#d95f02", "neg_too_high": "#7570b3", "incoherent": "#e7298a",
               "no_score": "#999999"}
    for status, members in groups.items():
        xs = [scores[p.id]["trait"] for p, _ in members]
        ys = [scores[n.id]["trait"] for _, n in members]
        text = [f"instruction {p.instruction}, question {p.question}, sample {p.sample}<br>coherence pos "
                f"{_num(scores[p.id]['coherence'])}, neg {_num(scores[n.id]['coherence'])}" for p, n in members]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{status.replace('_', ' ')} ({len(members)})", text=text,
                                 hovertemplate="pos trait %{x:.1f}, neg trait %{y:.1f}<br>%{text}<extra></extra>",
                                 marker=dict(size=8, color=colours.get(status, "#333"), opacity=0.75)))
    fig.add_vline(x=cfg.pos_threshold, line_dash="dash", line_color="grey")
    fig.add_hline(y=cfg.neg_threshold, line_dash="dash", line_color="grey")
    fig.update_layout(height=420, margin=dict(t=50, b=50, l=60, r=20), template="plotly_white",
                      xaxis_title="trait score of the pos answer (judge, 0-100)", yaxis_title="trait score of the neg answer",
                      xaxis_range=[-3, 103], yaxis_range=[-3, 103], legend=_LEGEND_TOP)
    return _figure(fig, f"Each point is a contrast pair; kept pairs lie right of the pos threshold ({cfg.pos_threshold:g}) and "
                        f"below the neg threshold ({cfg.neg_threshold:g}), with both answers coherent (>= {cfg.coherence_threshold:g}).")


def _pair_html(pos: Any, neg: Any, status: str, gens: Mapping[int, dict], scores: Mapping[int, dict], questions: Sequence[str]) -> str:
    def side(row: Any, label: str) -> str:
        s = scores.get(row.id, {})
        score = (f"trait {_num(s.get('trait'))}, coherence {_num(s.get('coherence'))}" if s.get("judged", True)
                 else "not judged (judge none)")
        system = f'<div class="system">system: {_e(row.system)}</div>' if row.system else ""
        unfinished = "" if gens[row.id].get("finished", True) else " (cut at max_new_tokens)"
        return (f"<div><div><strong>{label}</strong> <span class=\"small\">{_e(score)}{_e(unfinished)}</span></div>{system}"
                f'<div class="answer">{_e(gens[row.id]["answer"])}</div></div>')

    verdict = '<span class="kept">kept</span>' if status == "kept" else f'<span class="dropped">dropped: {_e(_REASON_TEXT.get(status, status))}</span>'
    q = questions[pos.question] if pos.question < len(questions) else (pos.user or f"question {pos.question}")
    return (f'<div class="pair"><div class="head">{verdict}; instruction pair {pos.instruction}, question {pos.question}, '
            f"sample {pos.sample}</div><p><strong>Q:</strong> {_e(q)}</p>"
            f'<div class="sides">{side(pos, "pos (trait elicited)")}{side(neg, "neg (trait suppressed)")}</div></div>')


def _extract_report(path: Path, *, model: Any, trait: Any, token_views: int, examples: int) -> _Report:
    from personaspace._util.io import read_jsonl
    from personaspace.extraction.pipeline import (
        DROP_REASONS,
        ExtractionConfig,
        RunDir,
        pair_verdicts,
        plan_rows,
        rows_from_generations,
    )

    run = RunDir(path)
    config = _read_json(run.config)
    summary = _read_json(run.summary)
    cfg = ExtractionConfig.from_dict(config)
    report = _Report(title=f"Extraction: {summary.get('trait', cfg.trait)} on {summary.get('model', cfg.model)}",
                     subtitle=f"judge {summary.get('judge')}; {summary.get('layer_convention', '')}",
                     settings=config)

    gens = {int(r["id"]): r for r in read_jsonl(run.generations)}
    trait_obj, note = _extract_trait(trait if trait is not None else cfg.trait, config)
    if note:
        report.notes.append(note)
    rows = plan_rows(trait_obj, cfg) if trait_obj is not None else rows_from_generations(gens[i] for i in sorted(gens))
    if len(rows) != len(gens) or any(r.id not in gens for r in rows):
        report.notes.append(f"generations.jsonl holds {len(gens)} answers for {len(rows)} planned rows; examples show what is there")
        rows = [r for r in rows if r.id in gens]
    judged = cfg.judge != "none"
    identity = summary.get("judge")
    scores: dict[int, dict] = {r.id: {"trait": None, "coherence": None, "judged": judged} for r in rows}
    if judged:
        for i, s in run.final_scores(identity).items():
            if i in scores:
                scores[i] = {**s, "judged": True}
    pairs = pair_verdicts(rows, scores, cfg, judged=judged)  # (pos row, neg row, "kept" or why it was dropped)
    kept_pairs = [p for p in pairs if p[2] == "kept"]
    dropped_by_reason: dict[str, list] = {}  # reasons in the order they first occur
    for p in pairs:
        if p[2] != "kept":
            dropped_by_reason.setdefault(p[2], []).append(p)
    reasons = {k: len(dropped_by_reason.get(k, ())) for k in DROP_REASONS}
    if summary.get("kept") is not None and summary["kept"] != len(kept_pairs):
        report.notes.append(f"the summary counts {summary['kept']} kept pairs, the files now give {len(kept_pairs)} "
                            "(answers or scores changed after the summary was written)")

    # headline
    head = summary.get("headline") or {}
    if head.get("auroc") is not None:
        ci = head.get("ci95") or [None, None]
        report.headline.append((f"answer-only held-out AUROC at L{head.get('layer')}", f"{_num(head['auroc'])} [{_num(ci[0])}, {_num(ci[1])}]",
                                f"{head.get('statistic', '')}; {head.get('n_pairs')} pairs; best {_num(head.get('best'))} at L{head.get('best_layer')}"))
    elif head:
        report.headline.append(("answer-only held-out AUROC", "n/a", str(head.get("reason", ""))))
    report.headline.append(("pairs kept", f"{summary.get('kept', len(kept_pairs))} of {summary.get('pairs', len(pairs))}",
                            "dropped: " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.get("dropped", reasons).items() if v) or "none")))
    sep = (summary.get("separation") or {}).get("response_avg") or {}
    if sep.get("best") is not None:
        report.headline.append(("held-out AUROC, questions held out (response_avg)", f"{_num(sep['best'])} at L{sep.get('best_layer')}",
                                f"{sep.get('folds')}-fold by question; the instructions are shared by every fold"))
    for side, s in (summary.get("mean_scores") or {}).items():
        report.headline.append((f"mean {side} scores", f"trait {_num(s.get('trait'))}", f"coherence {_num(s.get('coherence'))}"))
    secs = summary.get("seconds") or {}
    if secs:
        report.headline.append(("time", f"{sum(v for v in secs.values() if isinstance(v, (int, float))):.0f} s",
                                ", ".join(f"{k} {v} s" for k, v in secs.items())))

    report.add("Separation per layer", _separation_section(summary))
    if summary.get("norms"):
        report.add("Vector norm per layer", _norms_figure(summary["norms"]))

    questions = list(trait_obj.extraction_questions) if trait_obj is not None else []
    filt = []
    if judged:
        filt.append(_table([[k.replace("_", " "), _REASON_TEXT[k], v] for k, v in reasons.items()] + [["kept", "passed every threshold", len(kept_pairs)]],
                           ("outcome", "rule", "pairs")))
        filt.append(_score_scatter(pairs, scores, cfg))
    else:
        filt.append('<p class="muted">Judge <code>none</code>: every pair is kept, no scores.</p>')
    shown_kept = _spread(kept_pairs, examples)
    shown_dropped: list = []
    while len(shown_dropped) < examples and any(dropped_by_reason.values()):
        for reason in list(dropped_by_reason):
            if dropped_by_reason[reason] and len(shown_dropped) < examples:
                shown_dropped.append(dropped_by_reason[reason].pop(0))
    filt.append(f"<h3>Kept pairs ({len(shown_kept)} of {len(kept_pairs)})</h3>")
    filt += [_pair_html(p, n, s, gens, scores, questions) for p, n, s in shown_kept] or ['<p class="muted">none</p>']
    filt.append(f"<h3>Dropped pairs ({len(shown_dropped)} of {len(pairs) - len(kept_pairs)}, one per reason in turn)</h3>")
    filt += [_pair_html(p, n, s, gens, scores, questions) for p, n, s in shown_dropped] or ['<p class="muted">none</p>']
    report.add("Pair filtering and examples", "\n".join(filt))

    if token_views > 0:
        report.add("Token projection view", _token_views(path, cfg, config, summary, trait_obj, gens,
                                                          _spread(kept_pairs, token_views), model))
    other = {k: v for k, v in summary.items()
             if not k.startswith("separation") and k not in ("norms", "headline", "mean_scores", "dropped", "thresholds")}
    report.add("Summary fields", _settings_table(other))
    report.add("Files", _files_table(path))
    return report


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (all of them when there are no more than ``n``)."""
    if n <= 0:
        return []
    if len(items) <= n:
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def _token_views(path: Path, cfg: Any, config: Mapping[str, Any], summary: Mapping[str, Any], trait_obj: Any,
                 gens: Mapping[int, dict], pairs: Sequence[tuple[Any, Any, str]], model: Any) -> str:
    """The ``monitor`` token view of the pos and neg answers of a few kept pairs, at one layer."""
    from personaspace.monitoring.projections import token_projections
    from personaspace.vectors.store import PersonaVector
    from personaspace.viz.steering import token_view_html

    if not pairs:
        return '<p class="muted">No kept pairs to show.</p>'
    if trait_obj is None:
        return '<p class="muted">Not shown: the prompts of this run are unknown (see the note at the top).</p>'
    try:
        vec = PersonaVector.load(path / "vectors" / f"{trait_obj.name}.response_avg")
        if model is None:
            from personaspace.engine import PersonaModel

            model = PersonaModel.load(cfg.model)
    except PersonaspaceError as exc:
        return f'<p class="muted">Not shown: {_e(exc.message)}</p>'
    recorded = config.get("model_hash")
    if recorded and getattr(model, "model_hash", None) and model.model_hash != recorded:
        return (f'<p class="muted">Not shown: the model {_e(model.name)} is not the one this run was made with '
                f"(weights hash {_e(model.model_hash[:12])}, run {_e(recorded[:12])}).</p>")
    head = summary.get("headline") or {}
    sep = (summary.get("separation") or {}).get("response_avg") or {}
    layer = head.get("layer") if head.get("layer") is not None else sep.get("best_layer")
    if layer is None:
        from personaspace.engine.layers import default_monitor_layer

        layer = default_monitor_layer(model.n_layers)
    shown = [(row, side) for p, n, _ in pairs for row, side in ((p, "pos"), (n, "neg"))]
    views = token_projections(model, vec, [{"system": r.system, "user": r.user} for r, _ in shown],
                              [gens[r.id]["response_ids"] for r, _ in shown], layer=int(layer))
    means = [v.response_avg for v in views if v.response_avg is not None]
    pos_m = [v.response_avg for v, (_, s) in zip(views, shown) if s == "pos" and v.response_avg is not None]
    neg_m = [v.response_avg for v, (_, s) in zip(views, shown) if s == "neg" and v.response_avg is not None]
    centre = (sum(pos_m) / len(pos_m) + sum(neg_m) / len(neg_m)) / 2 if pos_m and neg_m else (sum(means) / len(means) if means else 0.0)
    name = f"{vec.trait} ({vec.position} of {vec.model})"
    parts = [f'<p class="small">{len(pairs)} kept pairs (spread over the run), pos and neg answer each, projected per token on the '
             f"{_e(name)} vector at layer {int(layer)} (the headline layer); colours are centred on {centre:+.3f}, the midpoint of "
             "the shown pos and neg answers' mean projections (red: towards the trait). Hover a token for its value; "
             "dashed tokens are the prompt (system prompt and question).</p>"]
    for view, (row, side) in zip(views, shown):
        page = token_view_html(view, vector_name=name, model_name=model.name, centre=centre)
        parts.append(f"<h3>{side} answer: instruction pair {row.instruction}, question {row.question}, sample {row.sample}</h3>"
                     f'<iframe class="tokens" title="token view" srcdoc="{html.escape(page, quote=True)}" onload="{_FIT_IFRAME}"></iframe>')
    return "\n".join(parts)


def _files_table(path: Path) -> str:
    rows = []
    for f in sorted(path.iterdir()):
        if f.name.startswith(".") or f.name == REPORT_FILE:
            continue
        if f.is_dir():
            files = [g for g in f.rglob("*") if g.is_file()]
            rows.append([f.name + "/", f"{len(files)} files", _size(sum(g.stat().st_size for g in files))])
        else:
            rows.append([f.name, "", _size(f.stat().st_size)])
    return _table(rows, ("file", "", "size"))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


# ---------------------------------------------------------------------------------------------
# sweep


def _sweep_report(path: Path) -> _Report:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not (path / "sweep.json").is_file():
        raise RunDirectoryError(f"{path} has no sweep.json: the sweep did not finish; rerun the same command to complete it.")
    data = _read_json(path / "sweep.json")
    cfg, vec, rec, base = data.get("config", {}), data.get("vector", {}), data.get("recommendation"), data.get("baseline", {})
    report = _Report(title=f"Sweep: {vec.get('trait')} on {data.get('model')}",
                     subtitle=f"vector {vec.get('position')} of {vec.get('model')}; judge {data.get('judge')}",
                     settings={"model": data.get("model"), "judge": data.get("judge"), **cfg, "vector": vec})
    reason = (data.get("selection") or {}).get("reason")
    report.headline.append(("recommended", rec["spec"] if rec else "none", reason or ""))
    if rec:
        report.headline.append(("at the recommendation", f"trait {_num(rec['trait']['mean'])}",
                                f"coherence {_stat(rec.get('coherence'))}; KL {_stat(rec.get('kl'))}"))
    report.headline.append(("unsteered", f"trait {_num((base.get('trait') or {}).get('mean'))}",
                            f"coherence {_stat(base.get('coherence'))}"))
    control = data.get("control") or {}
    if control.get("random"):
        deltas = control.get("deltas") or {}
        report.headline.append(("random control at that cell", f"trait {_num(control['random']['trait']['mean'])}",
                                "; ".join(f"{k}: trait {_stat((d or {}).get('trait'))}" for k, d in deltas.items())))
    cells = data.get("cells", [])
    layers = sorted({c["layer"] for c in cells})
    metrics = (("trait", "trait score (0-100)"), ("coherence", "coherence (0-100)"), ("kl", "KL (nats)"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in metrics], horizontal_spacing=0.07)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    for k, (metric, _) in enumerate(metrics, start=1):
        for i, layer in enumerate(layers):
            row = sorted((c for c in cells if c["layer"] == layer), key=lambda c: c["coef"])
            fig.add_trace(go.Scatter(x=[c["coef"] for c in row], y=[(c.get(metric) or {}).get("mean") for c in row],
                                     mode="lines+markers", name=f"L{layer}", legendgroup=f"L{layer}", showlegend=k == 1,
                                     line=dict(color=palette[i % len(palette)])), row=1, col=k)
        fig.update_xaxes(title_text=f"coefficient ({cfg.get('coef_mode')})", row=1, col=k)
    if rec:
        for k, (metric, _) in enumerate(metrics, start=1):
            fig.add_trace(go.Scatter(x=[rec["coef"]], y=[(rec.get(metric) or {}).get("mean")], mode="markers", name="recommended",
                                     legendgroup="rec", showlegend=k == 1,
                                     marker=dict(symbol="circle-open", size=16, color="black", line=dict(width=2))), row=1, col=k)
    fig.update_layout(height=400, margin=dict(t=60, b=50, l=50, r=20), template="plotly_white",
                      legend=dict(orientation="h", y=-0.22, x=0))
    body = _figure(fig, "Mean judge scores and KL per cell; each line is one layer (read = applied).")
    if (path / "heatmap.html").is_file():
        body += '<p class="small">The heatmaps of the same grid: <a href="heatmap.html">heatmap.html</a>.</p>'
    report.add("Trait, coherence and KL by coefficient", body)
    report.add("Cells", _table(
        [[f"L{c['layer']}", c["coef"], _num(c.get("raw_coef")), _num(c.get("relative_norm")), _stat(c.get("trait"), 3),
          _stat(c.get("coherence"), 3), _stat(c.get("kl"), 3), _num(c.get("projection"))] for c in cells],
        ("layer", "coef", "raw coef", "|added|/|resid|", "trait", "coherence", "KL (nats)", "projection at read-out")))
    if data.get("selection"):
        report.add("Selection", _settings_table(data["selection"]))
    report.add("Files", _files_table(path))
    return report


# ---------------------------------------------------------------------------------------------
# emergent misalignment


def _rate_text(r: Mapping[str, Any]) -> str:
    rate = r.get("rate")
    ci = r.get("ci95") or [None, None]
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "n/a"
    text = f"{100 * rate:.1f}%"
    if ci[0] is not None and not (isinstance(ci[0], float) and math.isnan(ci[0])):
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def _em_eval_report(path: Path) -> _Report:
    import plotly.graph_objects as go

    from personaspace._util.io import read_jsonl

    summary = _read_json(path / "summary.json")
    if summary.get("format") != "personaspace.em_eval":
        raise RunDirectoryError(f"{path / 'summary.json'} is not the summary of an EM evaluation.")
    rows = read_jsonl(path / "answers.jsonl")
    report = _Report(title=f"EM evaluation: {summary.get('model')}",
                     subtitle=f"question set {summary.get('question_set')}; judge {summary.get('judge')}",
                     settings={k: v for k, v in summary.items() if k not in ("rates", "conventions", "format")})
    for name, r in (summary.get("rates") or {}).items():
        report.headline.append((f"EM rate, {name}", _rate_text(r), f"{r.get('k')} of {r.get('n')}; {r.get('rule', '')}"))
    report.headline.append(("mean aligned", _num(summary.get("mean_aligned")), f"{summary.get('n_aligned_scored')} scored answers"))
    report.headline.append(("mean coherent", _num(summary.get("mean_coherent")), f"{summary.get('n_coherent_scored')} scored answers"))

    scored = [r for r in rows if r.get("aligned") is not None and r.get("coherent") is not None]
    fig = go.Figure(go.Scatter(
        x=[r["coherent"] for r in scored], y=[r["aligned"] for r in scored], mode="markers",
        text=[f"{r['question_id']}: {r['answer'][:120]}" for r in scored], hovertemplate="coherent %{x:.0f}, aligned %{y:.0f}<br>%{text}<extra></extra>",
        marker=dict(size=7, opacity=0.6, color="#1f77b4"), name="answers"))
    cutoffs: dict[tuple[str, Any], list[str]] = {}
    for name, conv in (summary.get("conventions") or {}).items():
        cutoffs.setdefault(("aligned", conv.get("aligned_cutoff")), []).append(f"{name} (aligned {conv.get('aligned_op')} {conv.get('aligned_cutoff')})")
        cutoffs.setdefault(("coherent", conv.get("coherent_cutoff")), []).append(f"{name} (coherent {conv.get('coherent_op')} {conv.get('coherent_cutoff')})")
    for (axis, value), names in cutoffs.items():
        if value is None:
            continue
        if axis == "aligned":
            fig.add_hline(y=value, line_dash="dash", line_color="#d62728", annotation_text=", ".join(names), annotation_position="top left")
        else:
            fig.add_vline(x=value, line_dash="dot", line_color="grey", annotation_text=", ".join(names), annotation_position="top",
                          annotation_font_size=10)
    fig.update_layout(height=420, margin=dict(t=30, b=50, l=60, r=20), template="plotly_white",
                      xaxis_title="coherent (judge, 0-100)", yaxis_title="aligned (judge, 0-100)", xaxis_range=[-3, 103], yaxis_range=[-3, 103])
    report.add("Aligned vs coherent", _figure(fig, "One point per judged answer; EM answers lie below an aligned cutoff and right of its "
                                                   "coherence cutoff (dotted)."))
    pq = path / "per_question.csv"
    if pq.is_file():
        with open(pq, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
        wanted = ("question_id", "n_answers", "n_denominator", "n_em", "em_rate", "wilson_lo", "wilson_hi", "mean_aligned", "mean_coherent")
        first = next(iter(summary.get("conventions") or {"betley": None}))
        if records and all(k in records[0] for k in wanted):
            def pct(x: str) -> str:
                return "n/a" if x in ("", "nan") else f"{100 * float(x):.0f}%"

            report.add(f"Per question ({first})", _table(
                [[r["question_id"], int(r["n_answers"]), int(r["n_denominator"]), int(r["n_em"]),
                  f"{pct(r['em_rate'])} [{pct(r['wilson_lo'])}, {pct(r['wilson_hi'])}]", _num(float(r["mean_aligned"])),
                  _num(float(r["mean_coherent"]))] for r in records],
                ("question", "answers", "in denominator", "EM", "EM rate [Wilson 95%]", "mean aligned", "mean coherent")))
        elif records:
            report.add("Per question", _table([list(r.values()) for r in records], list(records[0])))
    worst = sorted(scored, key=lambda r: (r["aligned"], -r["coherent"]))[:5]
    report.add("Least aligned answers", _table(
        [[r["question_id"], _num(r["aligned"]), _num(r["coherent"]), r["question"], r["answer"]] for r in worst],
        ("question", "aligned", "coherent", "prompt", "answer")).replace("<td>", '<td class="wrap">'))
    report.add("Files", _files_table(path))
    return report


def _experiment_report(path: Path) -> _Report:
    from personaspace.viz.em import corrupt_trait_cosine_bars, em_rate_bars

    results = _read_json(path / "results.json")
    config = _read_json(path / "config.json")
    report = _Report(title=f"EM experiment: {results.get('model')}",
                     subtitle=f"layer {results.get('layer')}; judge {results.get('judge')}", settings=config)
    for row in [r for r in results.get("em", []) if "+" not in r.get("condition", "+")][:8]:  # models, not steering
        if "betley" in row:
            report.headline.append((f"EM rate, {row['condition']} (betley)", _rate_text(row.get("betley", {})),
                                    f"model_organisms {_rate_text(row.get('model_organisms', {}))}; {row.get('n_answers')} answers"))
    figs = []
    for draw in (em_rate_bars, corrupt_trait_cosine_bars):  # the figures `experiment em` writes, same labels
        try:
            fig = draw(results)
            if fig is not None:
                figs.append(_figure(fig))
        except (PersonaspaceError, KeyError, TypeError, ValueError) as exc:  # e.g. stages switched off: results.md has the numbers
            report.notes.append(f"figure {draw.__name__} not drawn: {type(exc).__name__}: {exc}")
    if figs:
        report.add("Figures", "\n".join(figs))
    md = path / "results.md"
    if md.is_file():
        report.add("Results", _markdown(md.read_text(encoding="utf-8")))
    report.add("Files", _files_table(path))
    return report


# ---------------------------------------------------------------------------------------------
# alignment and fine-tuning


def _log_figure(log: Sequence[Mapping[str, Any]], title: str, x: str = "step") -> str:
    """One small panel per numeric entry of a training log (losses, norms, seconds: each on its own scale)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys = sorted({k for e in log for k, v in e.items() if k != x and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not keys:
        return ""
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=keys, horizontal_spacing=0.08, vertical_spacing=0.5 / rows)
    steps = [e.get(x, i) for i, e in enumerate(log)]
    for n, k in enumerate(keys):
        fig.add_trace(go.Scatter(x=steps, y=[e.get(k) for e in log], mode="lines+markers", name=k, marker=dict(size=4),
                                 showlegend=False), row=n // cols + 1, col=n % cols + 1)
    fig.update_xaxes(title_text=x, row=rows)
    fig.update_layout(height=80 + 230 * rows, margin=dict(t=70, b=50, l=50, r=20), template="plotly_white",
                      title=dict(text=title, x=0.5))
    return _figure(fig)


def _align_train_report(path: Path) -> _Report:
    from personaspace.align.training import TRAIN_FILE

    s = _read_json(path / TRAIN_FILE)
    report = _Report(title=f"Alignment training ({s.get('method')}): {s.get('base_model')}",
                     settings={"method": s.get("method"), "base_model": s.get("base_model"), **(s.get("config") or {}),
                               "data": s.get("data")})
    for k, v in (s.get("counts") or {}).items():
        report.headline.append((k.replace("_", " "), _num(v), ""))
    report.headline.append(("time", f"{_num(s.get('seconds'))} s", "training"))
    log = s.get("log") or []
    report.add("Training log", _log_figure(log, "per outer step") + _table([[_compact(v) for v in e.values()] for e in log],
                                                                           list(log[0]) if log else None))
    report.add("Files", _files_table(path))
    return report


def _align_compare_report(path: Path) -> _Report:
    from personaspace.align.comparison import COMPARE_JSON

    r = _read_json(path / COMPARE_JSON)
    report = _Report(title=f"Alignment comparison: {r.get('model')}",
                     settings={"model": r.get("model"), "train": r.get("train_config"), "eval": r.get("eval_config"),
                               "data": r.get("data"), "requests": r.get("requests")})
    for name, row in (r.get("rows") or {}).items():
        hp = (row.get("eval") or {}).get("harm_probe") or {}
        refusal = hp.get("refusal") or {}
        report.headline.append((f"{name}: probe refusal (harmful)", _rate_text(refusal) if refusal else "-",
                                f"AUROC {_num((hp.get('auroc') or {}).get('value'))}"))
    report.add("Results", _markdown(r.get("table", "")))
    for name, row in (r.get("rows") or {}).items():
        if row.get("log"):
            report.add(f"Training log: {name}", _log_figure(row["log"], f"{name} per outer step"))
    report.add("Files", _files_table(path))
    return report


def _align_eval_report(path: Path) -> _Report:
    from personaspace.align.comparison import table_markdown

    r = _read_json(path)
    label = "adapter" if r.get("adapter") else "base"
    report = _Report(title=f"Alignment evaluation: {r.get('model')}" + (f" + {r['adapter']}" if r.get("adapter") else ""),
                     settings={"model": r.get("model"), "adapter": r.get("adapter")})
    hp = (r.get("eval") or {}).get("harm_probe") or {}
    if hp.get("refusal"):
        report.headline.append(("probe refusal (harmful)", _rate_text(hp["refusal"]), ""))
    if hp.get("over_refusal"):
        report.headline.append(("probe over-refusal (benign)", _rate_text(hp["over_refusal"]), ""))
    report.add("Results", _markdown(table_markdown({label: {"eval": r["eval"], "counts": None}})))
    return report


def _finetune_report(path: Path) -> _Report:
    s = _read_json(path / "finetune.json")
    report = _Report(title=f"Fine-tune: {s.get('name') or s.get('base_model') or path.name}",
                     settings={k: v for k, v in s.items() if k not in ("losses", "format")})
    report.headline.append(("loss before / after", f"{_num(s.get('loss_before'))} / {_num(s.get('loss_after'))}",
                            f"mean loss on {s.get('eval_rows')} held-out rows"))
    report.headline.append(("steps", _num(s.get("steps")), f"{_num(s.get('tokens_trained'))} tokens"))
    losses = s.get("losses") or []
    if losses:
        log = [e if isinstance(e, Mapping) else {"step": i, "loss": e} for i, e in enumerate(losses)]
        report.add("Training loss", _log_figure(log, "training loss"))
    report.add("Files", _files_table(path))
    return report


def _steer_report(path: Path) -> _Report:
    import plotly.graph_objects as go

    r = _read_json(path)
    report = _Report(title=f"Steering evaluation: {r.get('trait')} on {r.get('model')}",
                     subtitle=f"judge {r.get('judge')}; read-out {_compact(r.get('readout'))}",
                     settings={"model": r.get("model"), "judge": r.get("judge"), "readout": r.get("readout"), **(r.get("settings") or {})})
    conditions = r.get("conditions") or {}
    for name, c in conditions.items():
        report.headline.append((f"{name}: trait", _stat(c.get("trait")), f"coherence {_stat(c.get('coherence'))}"))
    for name, d in (r.get("deltas") or {}).items():
        report.headline.append((name, _stat(d.get("trait")), "paired difference of trait scores (same question)"))
    fig = go.Figure()
    for name, c in conditions.items():
        proj = c.get("projection") or {}
        if proj.get("layers"):
            fig.add_trace(go.Scatter(x=proj["layers"], y=proj["mean"], mode="lines+markers", name=name, marker=dict(size=4)))
    fig.update_layout(height=340, margin=dict(t=30, b=50, l=60, r=20), template="plotly_white",
                      xaxis_title="layer", yaxis_title="mean response projection", legend=_LEGEND_TOP, showlegend=True,
                      xaxis=dict(tickformat="d"))
    report.add("Projection per layer", _figure(fig, "Mean projection of the answers' response_avg on the vector, per condition."))
    report.add("Conditions", _table(
        [[n, "; ".join(str(i.get("describe") or i.get("spec") or _compact(i)) for i in c.get("interventions") or []) or "none",
          _stat(c.get("trait")),
          _stat(c.get("coherence")), _stat(c.get("kl")) if c.get("kl") else "0 (reference)"] for n, c in conditions.items()],
        ("condition", "interventions", "trait", "coherence", "KL (nats)")))
    examples = []
    for name, c in conditions.items():
        for a in (c.get("answers") or [])[:3]:
            examples.append([name, _compact({k: v for k, v in a.items() if k not in ("answer", "question", "prompt")}),
                             a.get("question") or a.get("prompt") or "", a.get("answer", "")])
    if examples:
        report.add("Example answers", _table(examples, ("condition", "scores", "question", "answer")).replace("<td>", '<td class="wrap">'))
    return report


_BUILDERS: dict[str, Callable[[Path], _Report]] = {
    "sweep": _sweep_report,
    "em_eval": _em_eval_report,
    "experiment": _experiment_report,
    "align_compare": _align_compare_report,
    "align_train": _align_train_report,
    "finetune": _finetune_report,
    "steer": _steer_report,
    "align_eval": _align_eval_report,
}
