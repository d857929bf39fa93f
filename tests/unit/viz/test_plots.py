"""Plotly figures: the right traces and labels, readable choices (distinct titles and colours, bands under
the bars, no fixed width), and HTML that opens offline."""

from __future__ import annotations

import re

import pytest
from figure_kinds import figure_kinds, valence_set

from personaspace.errors import PersonaspaceError
from personaspace.geometry import comparison as c
from personaspace.geometry import space as g
from personaspace.geometry.valence import svv_report
from personaspace.viz import plots


@pytest.fixture(scope="module")
def space():
    return valence_set(noise=0.5, layers=3)


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
    assert len(bars.layout.shapes) == 3  # different-trait band and the random-direction band's two edges
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


def test_write_figure_loads_plotly_from_beside_it(space, tmp_path, monkeypatch):
    fig = plots.similarity_heatmap(g.cosine_matrix(space, 0))
    files = plots.write_figure(fig, tmp_path / "sim.html", png=False)
    assert files == [tmp_path / "sim.html"]
    html = files[0].read_text()
    assert len(html) < 200_000 and "Plotly.newPlot" in html  # plotly.js is not in the page ...
    assert '<script type="text/javascript" src="plotly.min.js"></script>' in html  # ... but beside it
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    assert not re.search(r"<script[^>]+src=[\"']https?:", html)  # nothing fetched from a CDN
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromium on the PATH
    monkeypatch.setattr(plots, "_png_kaleido", lambda *a: False)
    with pytest.raises(PersonaspaceError, match="static image exporter"):
        plots.write_figure(fig, tmp_path / "again", png=True)
    assert plots.write_figure(fig, tmp_path / "quiet") == [tmp_path / "quiet.html"]


def test_no_figure_has_a_fixed_width():
    for name, fig in figure_kinds().items():
        assert fig.layout.width is None, name  # fills its page: no horizontal scroll at 1200 px
        assert fig.layout.height, name


def test_compared_sets_are_told_apart():
    figs = figure_kinds()
    for name in ("compare_heatmaps", "compare_heatmaps_default_labels"):
        a, b = (ann.text for ann in figs[name].layout.annotations[:2])
        assert a != b, name
    assert figs["compare_heatmaps"].layout.annotations[0].text.startswith("smollm2-135m-instruct response_avg")
    assert figs["compare_heatmaps_default_labels"].layout.annotations[1].text.startswith("smollm2-135m-instruct (set B)")
    title = figs["trait_cosines"].layout.title.text
    assert "response_avg (L15) vs smollm2-135m-instruct prompt_avg (L15)" in title
    assert "prompt_avg" in figs["rsa_by_layer"].layout.title.text
    assert "(aligned)" in figs["em_trait_cosines"].layout.title.text
    assert plots.set_labels("m", "m", ("x", "x")) == ("x (set A)", "x (set B)")
    assert plots.set_labels("a", "b") == ("a", "b")


def test_layer_profile_gives_every_trait_its_own_colour():
    fig = figure_kinds()["layer_profile"]
    traits = [t for t in fig.data if t.legendgroup == "norms"]
    assert len(traits) == 16 and len({t.line.color for t in traits}) == 16
    assert {t.line.dash for t in traits} == {"solid", "dash"}  # valence: positive solid, negative dashed
    stats = [t for t in fig.data if t.legendgroup == "stats"]
    assert len({t.line.color for t in stats}) == len(stats) == 5
    assert fig.layout.height >= 19 * 21 + 150  # room for all 21 legend entries without scrolling


def test_chance_bands_lie_under_the_bars_and_are_named():
    for name in ("trait_cosines", "em_trait_cosines"):
        fig = figure_kinds()[name]
        assert len(fig.layout.shapes) == 3 and all(s.layer == "below" for s in fig.layout.shapes), name  # band, 2 lines
        assert not fig.layout.annotations  # no text drawn over the bars: the legend names the bands
        same = "same trait (95 % CI)" if name == "em_trait_cosines" else "same trait"  # error bars when there are CIs
        assert {t.name for t in fig.data} == {same, "different traits (95 % of cosines)", "random directions (95 %)"}
        assert (fig.data[0].error_y.array is not None) == (name == "em_trait_cosines")


def test_sweep_heatmap_frames_the_recommended_cell_without_hiding_it():
    from figure_kinds import sweep_result

    fig = figure_kinds()["sweep_heatmap"]
    frames = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(frames) == 3 and all(s.fillcolor == "rgba(0,0,0,0)" for s in frames)  # an outline, one per panel
    coefs, layers = (0.0, 0.25, 0.5, 1.0), (6, 9, 12, 15, 18, 21, 24)
    assert frames[0].x0 < coefs.index(0.5) < frames[0].x1 and frames[0].y0 < layers.index(15) < frames[0].y1
    assert all(t.type == "heatmap" and t.texttemplate for t in fig.data[:3])  # every cell's number is drawn
    markers = [t for t in fig.data if t.type == "scatter"]
    assert [list(t.x) for t in markers] == [[None]]  # a legend entry only: no marker on a cell
    sub = fig.layout.title.subtitle.text
    assert "recommended (framed): L15 coef 0.5" in sub and all(len(line) < 120 for line in sub.split("<br>"))
    none = figure_kinds()["sweep_heatmap_no_recommendation"]
    assert not none.layout.shapes and "no cell meets" in none.layout.title.subtitle.text
    assert sweep_result().recommendation is not None


def test_em_rate_bars_from_results():
    from personaspace.viz.em import em_rate_bars

    rate = {"rate": 0.25, "ci95": [0.1, 0.4]}
    results = {"judge": "offline", "em": [{"condition": c, "betley": rate, "model_organisms": rate} for c in ("aligned", "corrupt")]}
    fig = em_rate_bars(results)
    assert [t.name for t in fig.data] == ["betley", "model_organisms"] and list(fig.data[0].x) == ["aligned", "corrupt"]
    assert list(fig.data[0].error_y.arrayminus) == pytest.approx([0.15, 0.15])

