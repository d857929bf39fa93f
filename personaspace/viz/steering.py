"""Figures for steering: the sweep heatmap (plotly) and the token projection view.

Both are HTML pages that open offline (written through :mod:`personaspace.viz.html`): the heatmap
loads the ``plotly.min.js`` beside it (or embeds it, :func:`sweep_heatmap`), the token view is plain
HTML and CSS. Both print the vector, the layer it was read from and the layer it was applied at.
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

__all__ = ["sweep_figure", "sweep_heatmap", "write_sweep_heatmap", "token_projection_body", "token_projection_html",
           "token_view_html", "TOKEN_VIEW_CSS"]

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


def sweep_figure(result: SweepResult):
    """Three heatmaps (trait, coherence, KL) over layer x coefficient, the recommended cell outlined.

    Every cell shows its mean; the recommended cell gets a black frame (which hides no number) and a
    legend entry. The subtitle (baseline, sizes, limits, recommendation) is split over lines that fit.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cfg = result.config
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t, _ in _METRICS], horizontal_spacing=0.085)
    rec = result.recommendation
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
                colorbar=dict(x=0.277 + 0.3575 * (k - 1), len=0.9, thickness=10),
            ),
            row=1,
            col=k,
        )
        if rec is not None and rec["layer"] in layers and rec["coef"] in coefs:
            i, j = layers.index(rec["layer"]), coefs.index(rec["coef"])
            axis = "" if k == 1 else str(k)
            fig.add_shape(type="rect", xref=f"x{axis}", yref=f"y{axis}", x0=j - 0.47, x1=j + 0.47, y0=i - 0.45,
                          y1=i + 0.45, line=dict(color="black", width=3), fillcolor="rgba(0,0,0,0)", layer="above")
        fig.update_xaxes(title_text=f"coefficient ({cfg.coef_mode})", type="category", row=1, col=k)
        fig.update_yaxes(title_text="layer (read = applied)" if k == 1 else None, type="category", row=1, col=k)
    if rec is not None:  # the frame's legend entry
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"recommended: {rec['spec']}",
                                 marker=dict(symbol="square-open", size=16, color="black", line=dict(width=3)),
                                 hoverinfo="skip", showlegend=True), row=1, col=1)
    rec_text = (
        f"recommended (framed): L{rec['layer']} coef {rec['coef']:g}, trait {rec['trait']['mean']:.1f}, "
        f"coherence {rec['coherence']['mean']:.1f}, KL {rec['kl']['mean']:.3g}"
        if rec
        else f"no cell meets coherence >= {cfg.coherence_min:g} and KL <= {cfg.kl_max:g}"
    )
    base = result.baseline
    subtitle = (
        f"vector: {result.vector['position']} of {result.vector['model']}; judge {result.judge}; unsteered: trait "
        f"{base['trait']['mean']:.1f}, coherence {base['coherence']['mean']:.1f}<br>n = {cfg.n_questions} questions x "
        f"{cfg.samples} samples per cell, {cfg.kl_prompts} KL prompts; limits coherence >= {cfg.coherence_min:g}, "
        f"KL <= {cfg.kl_max:g}<br>{rec_text}"
    )
    n_layers = len({c["layer"] for c in result.cells})
    fig.update_layout(
        title=dict(text=_sweep_title(result), x=0.5, xanchor="center", yref="container",
                   y=1, yanchor="top", pad=dict(t=14), subtitle=dict(text=subtitle, font=dict(size=12, color="#444444"))),
        font=dict(family="Helvetica, Arial, sans-serif", size=13),
        autosize=True,
        height=350 + 34 * n_layers,
        margin=dict(t=145, b=110),
        legend=dict(orientation="h", x=0, xanchor="left", yref="container", y=0.01, yanchor="bottom"),
    )
    return fig


def sweep_heatmap(result: SweepResult) -> str:
    """:func:`sweep_figure` as one HTML page with plotly.js embedded (a single file that opens offline)."""
    from personaspace.viz.html import figure_html, page_html

    return page_html(_sweep_title(result), figure_html(sweep_figure(result)), inline_plotly=True, heading=False)


def _sweep_title(result: SweepResult) -> str:
    return f"{result.vector['trait']} sweep on {result.model}"


def write_sweep_heatmap(result: SweepResult, run_dir: str | Path) -> Path:
    """``heatmap.html`` in the sweep's run directory (``plotly.min.js`` beside it; opens offline); its path."""
    from personaspace.viz.html import write_figure

    return write_figure(sweep_figure(result), Path(run_dir) / "heatmap.html")


def _colour(value: float, scale: float) -> str:
    """Red for positive projections, blue for negative, white at zero."""
    t = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if t >= 0:
        r, g, b = 255, int(255 * (1 - 0.75 * t)), int(255 * (1 - 0.75 * t))
    else:
        r, g, b = int(255 * (1 + 0.75 * t)), int(255 * (1 + 0.75 * t)), 255
    return f"rgb({r},{g},{b})"


def token_projection_body(
    tokens: Sequence[str],
    values: Sequence[float],
    *,
    details: dict[str, Any] | None = None,
    n_prompt: int = 0,
    centre: float = 0.0,
) -> str:
    """The token view as a ``<div class="token-view">`` to put in a page (styled by :data:`TOKEN_VIEW_CSS`):
    a table of ``details``, then one coloured span per token, colour = projection minus ``centre``;
    hover shows the value. Tokens before ``n_prompt`` belong to the prompt and are drawn in a lighter frame.
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
    return f"""<div class="token-view">
<table>{rows}</table>
<p class="legend"><span style="background:{_colour(-1, 1)}">below centre</span><span style="background:#fff;border:1px solid #ddd">centre ({centre:+.3f})</span><span style="background:{_colour(1, 1)}">above centre</span>
colour saturates at |projection - centre| = {scale:.3f} (95th percentile); hover a token for its value; dashed = prompt tokens.</p>
<div class="text">{''.join(spans)}</div>
</div>"""


#: The CSS of the token view (:func:`token_projection_body`), for a page that holds one.
TOKEN_VIEW_CSS = """
.token-view .text { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; line-height: 2.0;
                    white-space: pre-wrap; }
.token-view .text span { padding: 2px 0; border-radius: 3px; }
.token-view .text span.p { opacity: 0.7; outline: 1px dashed #bbb; }
.token-view .sep { color: #888; padding: 0 4px; }
.token-view table { margin-bottom: 1em; font-size: 90%; }
.token-view th { background: none; color: #555; padding-right: 1em; }
.token-view .legend span { padding: 2px 8px; margin-right: 4px; }
"""


def token_projection_html(
    tokens: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    details: dict[str, Any] | None = None,
    n_prompt: int = 0,
    centre: float = 0.0,
) -> str:
    """A full page (offline, no script) of :func:`token_projection_body` under ``title``."""
    from personaspace.viz.html import page_html

    body = token_projection_body(tokens, values, details=details, n_prompt=n_prompt, centre=centre)
    return page_html(title, body, inline_plotly=False, css=TOKEN_VIEW_CSS)


def _token_view_details(projection: TokenProjection, vector_name: str, model_name: str) -> dict[str, str]:
    return {
        "model": model_name,
        "vector": vector_name,
        "read layer (vector row)": f"L{projection.read_layer}",
        "applied / measured at layer": f"L{projection.layer} (output of block {projection.layer})",
        "last prompt token projection": f"{projection.prompt_last:+.4f}",
        "response mean projection": "n/a" if projection.response_avg is None else f"{projection.response_avg:+.4f}",
        "tokens": f"{projection.n_prompt} prompt + {len(projection.tokens) - projection.n_prompt} response",
    }


def token_view_html(projection: TokenProjection, *, vector_name: str, model_name: str, centre: float = 0.0) -> str:
    """The standalone HTML token view of one :class:`~personaspace.monitoring.projections.TokenProjection`."""
    return token_projection_html(
        projection.tokens,
        projection.values,
        title=f"{vector_name} projection per token, layer {projection.layer}",
        details=_token_view_details(projection, vector_name, model_name),
        n_prompt=projection.n_prompt,
        centre=centre,
    )
