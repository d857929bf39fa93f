"""Figures for steering: the sweep heatmap (plotly, standalone HTML) and the token projection view.

Both are self-contained HTML files that open offline: the heatmap embeds plotly.js, the token view is
plain HTML and CSS. Both print the vector, the layer it was read from and the layer it was applied at.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from personaspace.monitoring.projections import TokenProjection
    from personaspace.steering.search import SweepResult

__all__ = ["sweep_heatmap", "write_sweep_heatmap", "token_projection_html", "token_view_html"]

_METRICS = (
    ("trait", "trait score (judge, 0-100)", "Reds"),
    ("coherence", "coherence (judge, 0-100)", "Greens"),
    ("kl", "KL(unsteered || steered), nats", "Purples"),
)


def _grid(result: SweepResult, metric: str) -> tuple[list[int], list[float], list[list[float | None]], list[list[str]]]:
    layers = sorted({c["layer"] for c in result.cells})
    coefs = sorted({c["coef"] for c in result.cells})
    z: list[list[float | None]] = [[None] * len(coefs) for _ in layers]
    text: list[list[str]] = [[""] * len(coefs) for _ in layers]
    for c in result.cells:
        i, j = layers.index(c["layer"]), coefs.index(c["coef"])
        m = c.get(metric) or {}
        mean = m.get("mean")
        if mean is not None and isinstance(mean, float) and math.isnan(mean):
            mean = None
        z[i][j] = mean
        ci = m.get("ci95") or [None, None]
        ci_text = f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci[0] is not None and not math.isnan(ci[0]) else "n/a"
        text[i][j] = (
            f"{c['spec']}<br>raw coef {c['raw_coef']:+.4g}, |added| {c['added_norm']:.3g}"
            f" ({c['relative_norm']} of residual norm)<br>{metric}: "
            + (f"{mean:.3g}" if mean is not None else "n/a")
            + f" 95% CI {ci_text}, n={m.get('n', 0)}"
        )
    return layers, coefs, z, text


def sweep_heatmap(result: SweepResult) -> str:
    """Three heatmaps (trait, coherence, KL) over layer x coefficient, the recommendation marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cfg = result.config
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t, _ in _METRICS], horizontal_spacing=0.08)
    for k, (metric, title, scale) in enumerate(_METRICS, start=1):
        layers, coefs, z, text = _grid(result, metric)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[f"{c:g}" for c in coefs],
                y=[f"L{L}" for L in layers],
                text=text,
                hovertemplate="%{text}<extra></extra>",
                texttemplate="%{z:.3g}",
                colorscale=scale,
                colorbar=dict(x=0.29 + 0.355 * (k - 1), len=0.9, thickness=10),
            ),
            row=1,
            col=k,
        )
        rec = result.recommendation
        if rec is not None:
            fig.add_trace(
                go.Scatter(
                    x=[f"{rec['coef']:g}"],
                    y=[f"L{rec['layer']}"],
                    mode="markers",
                    marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1)),
                    name="recommended",
                    showlegend=k == 1,
                    hovertext=[rec["spec"]],
                ),
                row=1,
                col=k,
            )
        fig.update_xaxes(title_text=f"coefficient ({cfg.coef_mode})", type="category", row=1, col=k)
        fig.update_yaxes(title_text="layer (read = applied)" if k == 1 else None, type="category", row=1, col=k)
    rec = result.recommendation
    rec_text = (
        f"recommended: {rec['spec']}, trait {rec['trait']['mean']:.1f}, coherence {rec['coherence']['mean']:.1f}, "
        f"KL {rec['kl']['mean']:.3g}"
        if rec
        else f"no cell meets coherence >= {cfg.coherence_min:g} and KL <= {cfg.kl_max:g}"
    )
    base = result.baseline
    title = (
        f"{result.vector['trait']} sweep on {result.model} (vector: {result.vector['position']} of {result.vector['model']}; "
        f"judge {result.judge})<br><sup>unsteered: trait {base['trait']['mean']:.1f}, coherence "
        f"{base['coherence']['mean']:.1f}; n = {cfg.n_questions} questions x {cfg.samples} samples per cell, "
        f"{cfg.kl_prompts} KL prompts; limits coherence >= {cfg.coherence_min:g}, KL <= {cfg.kl_max:g}; {rec_text}</sup>"
    )
    fig.update_layout(title=title, height=260 + 34 * len({c["layer"] for c in result.cells}), width=1300, margin=dict(t=110))
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_sweep_heatmap(result: SweepResult, run_dir: str | Path) -> Path:
    """``heatmap.html`` in the sweep's run directory (standalone, plotly.js embedded); its path."""
    from personaspace._util.io import write_text

    path = Path(run_dir) / "heatmap.html"
    write_text(path, sweep_heatmap(result))
    return path


def _colour(value: float, scale: float) -> str:
    """Red for positive projections, blue for negative, white at zero."""
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if t >= 0:
        r, g, b = 255, int(255 * (1 - 0.75 * t)), int(255 * (1 - 0.75 * t))
    else:
        r, g, b = int(255 * (1 + 0.75 * t)), int(255 * (1 + 0.75 * t)), 255
    return f"rgb({r},{g},{b})"


def token_projection_html(
    tokens: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    details: dict[str, Any] | None = None,
    n_prompt: int = 0,
    centre: float = 0.0,
) -> str:
    """One coloured span per token, colour = projection minus ``centre``; hover shows the value.

    Tokens before ``n_prompt`` belong to the prompt and are drawn in a lighter frame.
    """
    shifted = [v - centre for v in values]
    finite = [abs(v) for v in shifted if math.isfinite(v)]
    scale = sorted(finite)[int(0.95 * (len(finite) - 1))] if finite else 1.0
    spans = []
    for i, (tok, v, s) in enumerate(zip(tokens, values, shifted)):
        text = html.escape(tok).replace("\n", "&#8629;<br>")
        cls = "p" if i < n_prompt else "r"
        spans.append(
            f'<span class="{cls}" style="background:{_colour(s, scale)}" title="token {i}: {html.escape(repr(tok))}\n'
            f'projection {v:+.4f} (centred {s:+.4f})">{text}</span>'
        )
        if i == n_prompt - 1 and n_prompt < len(tokens):
            spans.append('<span class="sep">&#9655;</span>')
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in (details or {}).items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
.text {{ font-family: ui-monospace, monospace; line-height: 2.0; white-space: pre-wrap; }}
.text span {{ padding: 2px 0; border-radius: 3px; }}
.text span.p {{ opacity: 0.7; outline: 1px dashed #bbb; }}
.sep {{ color: #888; padding: 0 4px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; font-size: 90%; }}
th {{ text-align: left; padding-right: 1em; color: #555; }}
.legend span {{ padding: 2px 8px; margin-right: 4px; }}
</style></head>
<body><h2>{html.escape(title)}</h2>
<table>{rows}</table>
<p class="legend"><span style="background:{_colour(-1, 1)}">below centre</span><span style="background:#fff;border:1px solid #ddd">centre ({centre:+.3f})</span><span style="background:{_colour(1, 1)}">above centre</span>
colour saturates at |projection - centre| = {scale:.3f} (95th percentile); hover a token for its value; dashed = prompt tokens.</p>
<div class="text">{''.join(spans)}</div>
</body></html>
"""


def token_view_html(projection: TokenProjection, *, vector_name: str, model_name: str, centre: float = 0.0) -> str:
    """The standalone HTML token view of one :class:`~personaspace.monitoring.projections.TokenProjection`."""
    details = {
        "model": model_name,
        "vector": vector_name,
        "read layer (vector row)": f"L{projection.read_layer}",
        "applied / measured at layer": f"L{projection.layer} (output of block {projection.layer})",
        "last prompt token projection": f"{projection.prompt_last:+.4f}",
        "response mean projection": "n/a" if projection.response_avg is None else f"{projection.response_avg:+.4f}",
        "tokens": f"{projection.n_prompt} prompt + {len(projection.tokens) - projection.n_prompt} response",
    }
    return token_projection_html(
        projection.tokens,
        projection.values,
        title=f"{vector_name} projection per token, layer {projection.layer}",
        details=details,
        n_prompt=projection.n_prompt,
        centre=centre,
    )
