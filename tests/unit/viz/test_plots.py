"""Plotly figures: the right traces and labels, and HTML that carries plotly.js inline (offline)."""

from __future__ import annotations

import re

import pytest
from test_geometry import valence_set

from personaspace.errors import PersonaspaceError
from personaspace.geometry import comparison as c
from personaspace.geometry import space as g
from personaspace.geometry.valence import svv_report
from personaspace.viz import plots


@pytest.fixture(scope="module")
def space():
    return valence_set(noise=0.5)


def test_heatmap_and_pca_scatter(space):
    sim = g.cosine_matrix(space, 1, center=True)
    fig = plots.similarity_heatmap(sim)
    hm = fig.data[0]
    assert hm.type == "heatmap" and list(hm.x) == sim.traits and hm.zmin == -1 and hm.zmax == 1
    assert "centred" in fig.layout.title.text
    pca = g.pca(space, 1)
    by_valence = plots.pca_scatter(pca, "valence")
    assert {t.name for t in by_valence.data} == {"positive", "negative"}
    assert sum(len(t.x) for t in by_valence.data) == 16
    assert "PC1" in by_valence.layout.xaxis.title.text and "%" in by_valence.layout.xaxis.title.text
    by_family = plots.pca_scatter(pca, "family")
    assert {t.name for t in by_family.data} <= {"big_five", "dark_triad", "llm", "other"}
    with pytest.raises(PersonaspaceError, match="color_by"):
        plots.pca_scatter(pca, "zodiac")


def test_comparison_and_layer_figures(space):
    other = g.random_set(space, seed=3)
    cmp = c.compare_spaces(space, other, 1, n_null=50, n_boot=0)
    side = plots.comparison_heatmaps(cmp)
    assert [t.type for t in side.data] == ["heatmap", "heatmap"] and "RSA" in side.layout.title.text
    bars = plots.trait_cosine_bars(cmp)
    assert bars.data[0].type == "bar" and len(bars.data[0].x) == 16
    assert len(bars.layout.shapes) == 2  # different-trait band and random-direction band
    from_dict = plots.trait_cosine_bars(cmp.to_dict())  # as stored in results files
    assert list(from_dict.data[0].y) == list(bars.data[0].y) and from_dict.layout.title.text == bars.layout.title.text
    curve = c.rsa_by_layer(space, other, n_null=20)
    assert len(plots.rsa_by_layer_plot(curve).data) == 6
    prof = plots.layer_profile_plot(g.layer_profile(space), model="toy")
    assert len(prof.data) == 16 + 5
    rep = svv_report(space, n_perm=5)
    assert len(plots.svv_agreement_plot(rep).data) == 3 + 3


def test_cross_model_figure_across_widths(space):
    other = valence_set(noise=0.8, seed=5, d=space.d_model + 8)  # another width, as across models
    cmp = c.compare_spaces(space, other, 1, n_null=30, n_boot=0)
    curve = c.rsa_by_layer(space, other, n_null=20)
    fig = plots.cross_model_figure(cmp, curve)
    assert [t.type for t in fig.data] == ["heatmap"] * 2 + ["scatter"] * 5
    assert list(fig.data[0].x) == list(fig.data[1].x) == cmp.traits
    assert fig.data[2].x[0] == 0.0 and fig.data[2].x[-1] == 1.0  # relative depth
    assert "RSA" in fig.layout.title.text and "CKA" in fig.layout.title.text
    assert plots.cross_model_figure(cmp.to_dict(), curve).layout.title.text == fig.layout.title.text


def test_write_figure_is_standalone_html(space, tmp_path, monkeypatch):
    fig = plots.similarity_heatmap(g.cosine_matrix(space, 0))
    files = plots.write_figure(fig, tmp_path / "sim.html", png=False)
    assert files == [tmp_path / "sim.html"]
    html = files[0].read_text()
    assert len(html) > 1_000_000  # plotly.js is embedded
    assert not re.search(r"<script[^>]+src=[\"']https?:", html)  # nothing fetched from a CDN
    assert "Plotly.newPlot" in html
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on the PATH
    monkeypatch.setattr(plots, "_png_kaleido", lambda *a: False)
    with pytest.raises(PersonaspaceError, match="static image exporter"):
        plots.write_figure(fig, tmp_path / "again", png=True)
    assert plots.write_figure(fig, tmp_path / "quiet") == [tmp_path / "quiet.html"]


def test_em_rate_bars_from_results():
    from personaspace.viz.em import em_rate_bars

    rate = {"rate": 0.25, "ci95": [0.1, 0.4]}
    results = {"judge": "offline", "em": [{"condition": c, "betley": rate, "model_organisms": rate} for c in ("aligned", "corrupt")]}
    fig = em_rate_bars(results)
    assert [t.name for t in fig.data] == ["betley", "model_organisms"] and list(fig.data[0].x) == ["aligned", "corrupt"]
    assert list(fig.data[0].error_y.arrayminus) == pytest.approx([0.15, 0.15])

