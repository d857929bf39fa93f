"""Plotly figures of persona spaces, written as HTML pages that open offline.

Every function returns a ``plotly.graph_objects.Figure`` that fills the width of its page (no fixed
pixel width) at a fixed height; :func:`write_figure` saves it as HTML (through
:mod:`personaspace.viz.html`: the page loads the ``plotly.min.js`` written once beside it, nothing
from the network) and, when a static exporter is available (kaleido, or a headless Chromium/Chrome on
the PATH), as PNG too.

Where two sets are compared, ``labels`` names them (e.g. ``("smollm2 response_avg", "smollm2
prompt_avg")``); by default they are named by their models, or "set A"/"set B" when the models match.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from personaspace._util.io import atomic_path
from personaspace.viz import html as _html
from personaspace.viz.html import chromium_command, find_chromium

if TYPE_CHECKING:
    from personaspace.geometry.comparison import Comparison
    from personaspace.geometry.space import PCAResult, SimilarityMatrix
    from personaspace.geometry.valence import SVVReport

__all__ = [
    "similarity_heatmap",
    "pca_scatter",
    "comparison_heatmaps",
    "trait_cosine_bars",
    "rsa_by_layer_plot",
    "cross_model_figure",
    "layer_profile_plot",
    "svv_agreement_plot",
    "set_labels",
    "write_figure",
    "find_chromium",
    "chromium_command",
    "EXPORT_WIDTH",
]

VALENCE_COLORS = {"positive": "#1b9e77", "negative": "#d95f02", "neutral": "#7570b3", "unlabelled": "#999999"}
FAMILY_COLORS = {"big_five": "#1f77b4", "dark_triad": "#d62728", "llm": "#9467bd", "other": "#7f7f7f"}
#: 24 colours that stay apart on white (plotly's Dark24), for one line per trait.
LINE_COLORS = (
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86", "#EB663B", "#511CFB",
    "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042", "#1616A7",
    "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
)  # fmt: skip
VALENCE_DASH = {"positive": "solid", "negative": "dash", "neutral": "dot", "unlabelled": "dashdot"}
#: Width of a PNG export (and of the rendering checks): a laptop browser window.
EXPORT_WIDTH = 1200
_FONT = dict(family="Helvetica, Arial, sans-serif", size=13)


def _go():
    import plotly.graph_objects as go

    return go


def _layout(fig, title: str, *, height: int, **kw: Any):
    """Title centred, no fixed width (the figure fills its page), ``height`` px."""
    fig.update_layout(title=dict(text=title, x=0.5, xanchor="center"), font=_FONT, template="plotly_white",
                      autosize=True, height=height, **kw)
    return fig


@functools.lru_cache(maxsize=512)
def _trait_attr(trait: str, attr: str) -> str:
    """A built-in trait's ``valence`` or ``family``, ``"unlabelled"`` for traits the library lacks."""
    from personaspace.errors import PersonaspaceError
    from personaspace.traits import list_traits, load_trait

    if trait not in list_traits():
        return "unlabelled"
    try:
        return str(getattr(load_trait(trait), attr))
    except (PersonaspaceError, AttributeError):
        return "unlabelled"


def set_labels(model_a: str, model_b: str, labels: Sequence[str] | None = None) -> tuple[str, str]:
    """Two names that tell the compared sets apart: ``labels`` when given, else the two models, else
    ``"<model> (set A)"`` and ``"<model> (set B)"`` when both sets come from one model."""
    if labels is not None:
        la, lb = (str(x) for x in labels)
        if la != lb:
            return la, lb
        return f"{la} (set A)", f"{lb} (set B)"
    if model_a and model_b and model_a != model_b:
        return model_a, model_b
    return f"{model_a or 'vectors'} (set A)", f"{model_b or 'vectors'} (set B)"


def _side_labels(c: Mapping[str, Any], labels: Sequence[str] | None) -> tuple[str, str]:
    return set_labels(str(c.get("model_a") or ""), str(c.get("model_b") or ""), labels)


def similarity_heatmap(sim: SimilarityMatrix, title: str | None = None, *, order: Sequence[str] | None = None):
    """Trait-by-trait cosine heatmap (diverging colours centred on 0); ``order`` rearranges traits."""
    go = _go()
    names = list(order) if order is not None else sim.traits
    idx = [sim.traits.index(t) for t in names]
    z = sim.values[np.ix_(idx, idx)]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu_r", colorbar=dict(title="cosine"),
            text=np.round(z, 2), texttemplate="%{text}", hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>",
        )
    )
    kind = "centred (mean trait vector removed)" if sim.centered else "raw"
    fig.update_xaxes(constrain="domain", tickangle=-45)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain")  # square cells at any width
    return _layout(fig, title or f"{sim.model}: trait cosines, layer {sim.layer}, {kind}", height=max(560, 40 * len(names) + 200))


def pca_scatter(
    result: PCAResult,
    color_by: str = "valence",
    components: tuple[int, int] = (0, 1),
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
):
    """Traits on two principal components, coloured by ``valence`` or ``family`` (from the trait library).

    ``labels`` (trait -> group) overrides the library's grouping.
    """
    go = _go()
    if color_by not in ("valence", "family"):
        from personaspace.errors import PersonaspaceError

        raise PersonaspaceError(f"color_by must be 'valence' or 'family', got {color_by!r}.")
    i, j = components
    k = result.coords.shape[1]
    j = min(j, k - 1)
    colors = VALENCE_COLORS if color_by == "valence" else FAMILY_COLORS
    groups: dict[str, list[int]] = {}
    for n, t in enumerate(result.traits):
        g = (labels or {}).get(t) or _trait_attr(t, color_by)
        groups.setdefault(g, []).append(n)
    fig = go.Figure()
    for g, rows in groups.items():
        fig.add_trace(
            go.Scatter(
                x=result.coords[rows, i], y=result.coords[rows, j], mode="markers+text", name=g,
                text=[result.traits[r] for r in rows], textposition="top center", cliponaxis=False,
                marker=dict(size=12, color=colors.get(g, "#444444"), line=dict(width=1, color="white")),
            )
        )
    evr = result.explained_variance_ratio
    fig.update_xaxes(title=f"PC{i + 1} ({100 * evr[i]:.1f} % of variance)", zeroline=True)
    fig.update_yaxes(title=f"PC{j + 1} ({100 * evr[j]:.1f} % of variance)", zeroline=True)
    note = "centred persona space" if result.centered else "uncentred"
    return _layout(fig, title or f"{result.model}: PCA of trait vectors, layer {result.layer} ({note})", height=640,
                   legend=dict(title=color_by))


def comparison_heatmaps(comparison: Comparison, title: str | None = None, *, labels: Sequence[str] | None = None):
    """The two trait-by-trait cosine matrices side by side, with the RSA in the title.

    Each panel is titled with its set (``labels``, see :func:`set_labels`) and layer.
    """
    go = _go()
    from plotly.subplots import make_subplots

    a, b = comparison.sim_a, comparison.sim_b
    na, nb = set_labels(a.model, b.model, labels)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{na} · layer {a.layer}", f"{nb} · layer {b.layer}"),
                        horizontal_spacing=0.14)
    for col, sim in ((1, a), (2, b)):
        fig.add_trace(
            go.Heatmap(z=sim.values, x=sim.traits, y=sim.traits, zmin=-1, zmax=1, colorscale="RdBu_r",
                       showscale=col == 2, colorbar=dict(title="cosine", thickness=14),
                       hovertemplate="%{y} · %{x}: %{z:.3f}<extra>" + (na if col == 1 else nb) + "</extra>"),
            row=1, col=col,
        )
        fig.update_yaxes(autorange="reversed", showticklabels=True, row=1, col=col)
    fig.update_xaxes(tickangle=-45)
    r = comparison.metrics["rsa_pearson"]
    text = f"{na} vs {nb}: RSA (Pearson) {r['value']:.3f}"
    if "ci95" in r:
        text += f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
    if "null_permuted" in r:
        text += f", permuted-trait null 95 %: {r['null_permuted']['q975']:.2f}"
    return _layout(fig, title or text, height=max(600, 26 * len(a.traits) + 260))


def _band_legend(go, name: str, color: str):
    """A legend entry (a filled square) for a shaded band, which has no trace of its own."""
    return go.Scatter(x=[None], y=[None], mode="markers", name=name, hoverinfo="skip",
                      marker=dict(symbol="square", size=14, color=color))


def trait_cosine_bars(comparison: Comparison | Mapping[str, Any], title: str | None = None, *,
                      labels: Sequence[str] | None = None):
    """Per-trait cosine between the two sets, with bootstrap 95 % intervals and the chance bands.

    ``comparison`` is a :class:`~personaspace.geometry.comparison.Comparison` or its ``to_dict()`` form
    (``per_trait``, ``metrics``, ``model_a``/``model_b``, ``layer_a``/``layer_b``), as stored in results
    files. The chance bands (cosines between *different* traits, and between random directions) are
    drawn under the bars and named in the legend.
    """
    go = _go()
    from personaspace.errors import PersonaspaceError

    c = comparison if isinstance(comparison, Mapping) else comparison.to_dict()
    per_trait = c["per_trait"]
    if not per_trait:
        raise PersonaspaceError("Per-trait cosines exist only for two sets of the same width.")
    names = sorted(per_trait, key=lambda t: -per_trait[t]["cosine"])
    vals = [per_trait[t]["cosine"] for t in names]
    err = None
    if all("ci95" in per_trait[t] for t in names):
        lo = [v - per_trait[t]["ci95"][0] for t, v in zip(names, vals)]
        hi = [per_trait[t]["ci95"][1] - v for t, v in zip(names, vals)]
        err = dict(type="data", array=hi, arrayminus=lo, visible=True, color="#333333", thickness=1.2)
    fig = go.Figure(go.Bar(x=names, y=vals, error_y=err, marker_color="#4c72b0",
                           name="same trait (95 % CI)" if err else "same trait"))
    m = c["metrics"].get("mean_trait_cosine", {})
    other = m.get("other_trait_cosines")
    if other:
        fig.add_hrect(y0=other["q025"], y1=other["q975"], fillcolor="#dd8452", opacity=0.25, line_width=0, layer="below")
        fig.add_trace(_band_legend(go, "different traits (95 % of cosines)", "rgba(221,132,82,0.45)"))
    rq = m.get("random_direction_q975")
    if rq:
        # two dashed lines, not a fill: where it overlaps the other band, both stay readable
        for y in (-rq, rq):
            fig.add_hline(y=y, line=dict(color="#555555", width=1.5, dash="dash"), layer="below")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="random directions (95 %)", hoverinfo="skip",
                                 line=dict(color="#555555", width=1.5, dash="dash")))
    lows = [-0.2, min(vals) - 0.1, -(rq or 0) - 0.05, (other or {}).get("q025", 0.0) - 0.05]
    ymin = min(lows + ([per_trait[t]["ci95"][0] - 0.05 for t in names] if err else []))
    fig.update_yaxes(title="cosine", range=[ymin, 1.05])
    fig.update_xaxes(tickangle=-45)
    na, nb = _side_labels(c, labels)
    la, lb = c.get("layer_a"), c.get("layer_b")
    side_a = f"{na} (L{la})" if la is not None else na
    side_b = f"{nb} (L{lb})" if lb is not None else nb
    return _layout(fig, title or f"Per-trait cosine: {side_a} vs {side_b}", height=540,
                   legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"),
                   margin=dict(t=110))


def rsa_by_layer_plot(curve: Mapping[str, Any], title: str | None = None, *, labels: Sequence[str] | None = None):
    """RSA (and CKA, mean per-trait cosine when present) against layer, with the permuted-trait null."""
    go = _go()
    x = curve["layers_a"]
    na, nb = _side_labels(curve, labels)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=curve["rsa_pearson"], mode="lines+markers", name="RSA Pearson (raw)"))
    fig.add_trace(go.Scatter(x=x, y=curve["rsa_spearman"], mode="lines+markers", name="RSA Spearman (raw)"))
    fig.add_trace(go.Scatter(x=x, y=curve["rsa_pearson_centered"], mode="lines+markers", name="RSA Pearson (centred)"))
    fig.add_trace(go.Scatter(x=x, y=curve["cka_linear"], mode="lines", name="linear CKA", line=dict(dash="dot")))
    if curve.get("mean_trait_cosine"):
        fig.add_trace(go.Scatter(x=x, y=curve["mean_trait_cosine"], mode="lines", name="mean per-trait cosine",
                                 line=dict(dash="dash")))
    fig.add_trace(go.Scatter(x=x, y=curve["null_q95"], mode="lines", name="permuted-trait null (95th pct.)",
                             line=dict(color="grey", dash="dashdot")))
    fig.update_xaxes(title=f"layer of {na}")
    fig.update_yaxes(title="similarity", range=[-0.5, 1.05])
    return _layout(fig, title or f"Persona-space similarity by layer: {na} vs {nb}", height=520)


def _ci_text(entry: Mapping[str, Any]) -> str:
    ci = entry.get("ci95")
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and ci[0] is not None else ""


def cross_model_figure(comparison: Comparison | Mapping[str, Any], curve: Mapping[str, Any], title: str | None = None,
                       *, labels: Sequence[str] | None = None):
    """Two models' persona spaces side by side, and their similarity at every relative depth.

    Left and middle: the trait-by-trait cosine matrices at the compared layers (same trait order). Right:
    RSA (Pearson and Spearman, raw; Pearson centred) and linear CKA at every layer of the first model
    against the second model's layer at the same relative depth (``curve`` from
    :func:`~personaspace.geometry.comparison.rsa_by_layer`), with the permuted-trait null's 95th
    percentile; the compared layer is marked. Works across widths and layer counts.
    """
    go = _go()
    from plotly.subplots import make_subplots

    c = comparison if isinstance(comparison, Mapping) else comparison.to_dict()
    na, nb = _side_labels(c, labels)
    sa, sb = c["similarity_a"], c["similarity_b"]
    traits = list(sa["traits"])
    depth_a = max(max(curve["layers_a"]), 1)
    x = [la / depth_a for la in curve["layers_a"]]
    fig = make_subplots(
        rows=1, cols=3, column_widths=[0.29, 0.29, 0.42], horizontal_spacing=0.12,
        subplot_titles=(f"{na} · layer {c['layer_a']}", f"{nb} · layer {c['layer_b']}", "similarity by relative depth"),
    )
    colorbar_x = fig.layout.xaxis2.domain[1] + 0.005
    for col, sim in ((1, sa), (2, sb)):
        idx = [list(sim["traits"]).index(t) for t in traits]
        z = np.asarray(sim["values"], dtype=float)[np.ix_(idx, idx)]
        fig.add_trace(
            go.Heatmap(z=z, x=traits, y=traits, zmin=-1, zmax=1, colorscale="RdBu_r", showscale=col == 2,
                       colorbar=dict(title="cosine", x=colorbar_x, len=0.85, thickness=12),
                       hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"),
            row=1, col=col,
        )
        fig.update_yaxes(autorange="reversed", showticklabels=col == 1, row=1, col=col)
        fig.update_xaxes(tickangle=-60, tickfont=dict(size=11), row=1, col=col)
    hover = [f"{na} L{la} · {nb} L{lb}" for la, lb in zip(curve["layers_a"], curve["layers_b"])]
    series = [("rsa_pearson", "RSA Pearson (raw)", "lines+markers", None),
              ("rsa_spearman", "RSA Spearman (raw)", "lines+markers", None),
              ("rsa_pearson_centered", "RSA Pearson (centred)", "lines+markers", None),
              ("cka_linear", "linear CKA", "lines", "dot"),
              ("null_q95", "permuted-trait null (95th pct.)", "lines", "dashdot")]
    for key, label, mode, dash in series:
        line = dict(dash=dash, color="grey") if key == "null_q95" else dict(dash=dash)
        fig.add_trace(go.Scatter(x=x, y=curve[key], mode=mode, name=label, text=hover, line=line, marker=dict(size=5),
                                 hovertemplate="%{text}: %{y:.3f}<extra>" + label + "</extra>"), row=1, col=3)
    fig.add_vline(x=c["layer_a"] / depth_a, line_dash="dot", line_color="#444444", row=1, col=3)
    fig.update_xaxes(title=f"relative depth (layer / {depth_a} of {na})", range=[-0.02, 1.02], row=1, col=3)
    fig.update_yaxes(range=[-0.5, 1.05], row=1, col=3)  # no axis title: the panel title says it, the colour bar is near
    fig.update_layout(legend=dict(x=1, xanchor="right", y=-0.3, yanchor="top", orientation="h"), margin=dict(b=200))
    m = c["metrics"]
    text = (f"{na} vs {nb}, {len(traits)} traits: RSA {m['rsa_pearson']['value']:.2f}"
            f"{_ci_text(m['rsa_pearson'])}, CKA {m['cka_linear']['value']:.2f}{_ci_text(m['cka_linear'])}")
    return _layout(fig, title or text, height=680)


def layer_profile_plot(profile: Mapping[str, Any], title: str | None = None, model: str = ""):
    """Two panels over layers: every trait vector's norm; and the space's separation statistics.

    Each trait line has its own colour (24 colours, then repeated with another dash) and its dash shows
    the valence (solid positive, dashed negative, dotted neutral); the legend lists the traits, then the
    structure curves, and the figure grows with the number of traits so that every entry shows.
    """
    go = _go()
    from plotly.subplots import make_subplots

    x = profile["layers"]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=("vector norm by layer (dash: valence)", "persona-space structure by layer"))
    n_traits = 0
    for n, (t, norms) in enumerate(profile["norms"].items()):
        valence = _trait_attr(t, "valence")
        dash = VALENCE_DASH.get(valence, "dashdot") if n < len(LINE_COLORS) else "longdashdot"
        fig.add_trace(go.Scatter(x=x, y=norms, mode="lines", name=t, legendgroup="norms",
                                 legendgrouptitle_text="trait (vector norm)" if n == 0 else None,
                                 line=dict(color=LINE_COLORS[n % len(LINE_COLORS)], width=1.6, dash=dash),
                                 hovertemplate=f"{t} ({valence}) L%{{x}}: %{{y:.3g}}<extra></extra>"), row=1, col=1)
        n_traits += 1
    series = [("mean_abs_cos_raw", "mean |cos| raw"), ("mean_abs_cos_centered", "mean |cos| centred"),
              ("pc1_explained", "PC1 variance share"), ("valence_gap", "valence gap (cos)"),
              ("pc1_auroc", "PC1 valence AUROC")]
    n_stats = 0
    structure_colors = ("#000000", "#555555", "#1f77b4", "#d62728", "#2ca02c")
    for (key, label), color in zip(series, structure_colors):
        if profile.get(key):
            fig.add_trace(go.Scatter(x=x, y=profile[key], mode="lines+markers", name=label, legendgroup="stats",
                                     legendgrouptitle_text="structure" if n_stats == 0 else None,
                                     line=dict(color=color, width=2), marker=dict(size=4)), row=1, col=2)
            n_stats += 1
    fig.update_xaxes(title="layer")
    fig.update_yaxes(title="L2 norm", row=1, col=1)
    fig.update_yaxes(title="statistic", row=1, col=2)
    # every legend entry is ~19 px high, plus two group titles and the gap; plotly scrolls a legend taller
    # than the plot area, so the plot area is made at least that tall (with some room to spare)
    height = max(560, 19 * (n_traits + n_stats) + 2 * 24 + 16 + 150 + 60)
    return _layout(fig, title or f"{model} layer profile".strip(), height=height,
                   legend=dict(tracegroupgap=16, font=dict(size=12), yanchor="top", y=1.0, groupclick="toggleitem"),
                   margin=dict(t=90, b=60))


def svv_agreement_plot(report: SVVReport, title: str | None = None):
    """Cosine between SVV definitions, and their leave-one-trait-out accuracy, against layer."""
    go = _go()
    from plotly.subplots import make_subplots

    layers = list(next(iter(report.vectors.values())).layers)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=("cosine between SVV definitions", "leave-one-trait-out valence accuracy"))
    for key, vals in report.agreement_by_layer.items():
        fig.add_trace(go.Scatter(x=layers, y=vals, mode="lines+markers", name=key, marker=dict(size=4),
                                 legendgroup="agree", legendgrouptitle_text="agreement"), row=1, col=1)
    lx = report.loto_by_layer["layers"]
    for d in report.vectors:
        fig.add_trace(go.Scatter(x=lx, y=report.loto_by_layer[d], mode="lines+markers", name=f"LOTO {d}",
                                 marker=dict(size=4), line=dict(dash="dash"),
                                 legendgroup="loto", legendgrouptitle_text="held-out accuracy"), row=1, col=2)
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", row=1, col=2)
    fig.update_xaxes(title="layer")
    fig.update_yaxes(range=[-1.05, 1.05], row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    return _layout(fig, title or "Semantic Valence Vector: agreement and held-out accuracy", height=520,
                   legend=dict(tracegroupgap=16))


# --------------------------------------------------------------------------------------------
# files


def _png_kaleido(fig, path: Path, width: int, height: int) -> bool:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    try:
        data = fig.to_image(format="png", width=width, height=height)
    except Exception:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def _png_chromium(fig, path: Path, width: int, height: int) -> bool:
    binary = find_chromium()
    if binary is None:
        return False
    with tempfile.TemporaryDirectory(prefix="personaspace-png-") as tmpdir:
        page = Path(tmpdir) / "figure.html"
        shot = Path(tmpdir) / "figure.png"
        _html.write_page(page, "figure", _html.figure_html(fig, static=True), heading=False,
                         css="body { margin: 0; padding: 0; max-width: none; overflow: hidden; }")
        cmd = chromium_command(binary, f"--screenshot={shot}", f"--window-size={width},{height}",
                               f"--user-data-dir={Path(tmpdir) / 'profile'}", page.as_uri())
        try:
            subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if not shot.is_file() or shot.stat().st_size == 0:
            return False
        with atomic_path(path) as tmp:
            tmp.write_bytes(shot.read_bytes())
    return True


def write_figure(fig, path: str | os.PathLike, *, png: bool | None = None, width: int = EXPORT_WIDTH) -> list[Path]:
    """Write ``fig`` as ``<path>.html`` (loading the ``plotly.min.js`` written once beside it: opens
    offline) and maybe ``<path>.png`` (``width`` px wide, the figure's height).

    ``png=None`` writes a PNG when an exporter is available (kaleido, else headless Chromium);
    ``png=True`` makes a missing exporter an error; ``png=False`` skips it. Returns the figure files
    written (not ``plotly.min.js``).
    """
    from personaspace.errors import PersonaspaceError

    base = Path(path)
    if base.suffix in (".html", ".png"):
        base = base.with_suffix("")
    written = [_html.write_figure(fig, base.with_suffix(".html"))]
    if png is not False:
        width = int(fig.layout.width or width)
        height = int(fig.layout.height or 600)
        target = base.with_suffix(".png")
        if _png_kaleido(fig, target, width, height) or _png_chromium(fig, target, width, height):
            written.append(target)
        elif png:
            raise PersonaspaceError(
                "No static image exporter: install kaleido (pip install kaleido) or Chromium (Debian: "
                "apt-get install -y chromium), or pass png=False."
            )
    return written
