"""HTML pages open offline: plotly.js written once beside them (or embedded once), nothing from the network.

Also scans every HTML file the repository ships under docs/ and every page each writer of the package
produces (the session fixture in tests/conftest.py scans whatever else the suite writes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import plotly.graph_objects as go
import pytest
from figure_kinds import em_results, figure_kinds, sweep_result

from personaspace.viz import html as vh

ROOT = Path(__file__).resolve().parents[3]


def _fig(title: str = "t"):
    return go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout=dict(title=title, height=300))


def test_plotly_js_is_written_once_and_replaced_when_another_version(tmp_path):
    path = vh.ensure_plotly_js(tmp_path)
    assert path == tmp_path / vh.PLOTLY_JS and path.stat().st_size > 1_000_000
    assert f"plotly.js v{__import__('plotly.offline.offline').offline.offline.get_plotlyjs_version()}" in path.read_text()[:200]
    os.utime(path, (1, 1))
    assert vh.ensure_plotly_js(tmp_path).stat().st_mtime == 1  # current version: left alone
    path.write_text("/**\n* plotly.js v1.0.0\n*/\n")  # another version (or a cut file): rewritten
    assert vh.ensure_plotly_js(tmp_path).stat().st_size > 1_000_000
    path.write_bytes(path.read_bytes()[:5000])  # same banner, cut short: rewritten
    assert vh.ensure_plotly_js(tmp_path).stat().st_size > 1_000_000
    assert [p.name for p in tmp_path.iterdir()] == [vh.PLOTLY_JS]  # no temporary file left


def test_figure_snippet_and_pages(tmp_path):
    snippet = vh.figure_html(_fig(), div_id="fig-1")
    assert 'id="fig-1"' in snippet and "Plotly.newPlot" in snippet and len(snippet) < 50_000
    assert '"responsive": true' in snippet.replace('"responsive":true', '"responsive": true')
    assert '"displaylogo": false' in snippet.replace('"displaylogo":false', '"displaylogo": false')
    assert "width:100%" in snippet and "height:300px" in snippet
    shared = vh.page_html("Two <figures>", snippet, inline_plotly=False)
    assert shared.count('src="plotly.min.js"') == 1 and "<h1>Two &lt;figures&gt;</h1>" in shared
    alone = vh.page_html("One file", snippet + vh.figure_html(_fig("u")), inline_plotly=True)
    assert alone.count("* plotly.js v") == 1 and 'src="plotly.min.js"' not in alone  # embedded once, for both figures
    text_only = vh.page_html("Notes", "<p>no figure</p>", inline_plotly=False)
    assert "<script" not in text_only and "<style>" in text_only
    page = vh.write_page(tmp_path / "sub" / "report.html", "Report", snippet)
    assert (tmp_path / "sub" / vh.PLOTLY_JS).is_file() and page.read_text() == shared.replace("Two &lt;figures&gt;", "Report")
    single = vh.write_page(tmp_path / "single" / "report.html", "Report", snippet, inline_plotly=True)
    assert not (single.parent / vh.PLOTLY_JS).exists()
    fig_page = vh.write_figure(_fig("A title<br><sup>sub</sup>"), tmp_path / "figs" / "f.html")
    assert "<title>A title</title>" in fig_page.read_text() and (tmp_path / "figs" / vh.PLOTLY_JS).is_file()
    for p in (page, single, fig_page):
        assert vh.find_remote_loads(p.read_text()) == [], p


@pytest.mark.parametrize(
    "snippet",
    [
        '<script src="https://cdn.plot.ly/plotly-2.35.2.min.js"></script>',
        "<script charset='utf-8' src=//cdn.jsdelivr.net/npm/x.js></script>",
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">',
        '<link href="http://example.org/a.css" rel="stylesheet">',
        "<style>@import url(https://fonts.googleapis.com/css2?family=Inter);</style>",
        "<style>@font-face { font-family: X; src: url('https://example.org/x.woff2'); }</style>",
        '<img src="https://example.org/logo.png">',
        '<script>require.config({paths: {plotly: "x"}}); import("https://esm.sh/plotly.js")</script>',
    ],
)
def test_remote_loads_are_found(snippet):
    page = vh.page_html("x", snippet, inline_plotly=False)
    assert vh.find_remote_loads(page), snippet


def test_links_and_local_files_are_not_remote_loads():
    body = ('<a href="https://github.com/x/y">source</a> <a href=\'http://example.org\'>x</a>'
            '<script src="plotly.min.js"></script><link rel="stylesheet" href="style.css"><img src="figure.png">')
    assert vh.find_remote_loads(vh.page_html("x", body, inline_plotly=True)) == []


def _writer_outputs(directory: Path) -> list[Path]:
    """Every HTML page each writer of the package produces, written into ``directory``."""
    from personaspace.viz import plots
    from personaspace.viz.em import write_em_figures
    from personaspace.viz.steering import sweep_heatmap, token_projection_html, write_sweep_heatmap

    pages = []
    for name, fig in figure_kinds().items():
        pages += plots.write_figure(fig, directory / "figures" / name, png=False)
    pages.append(write_sweep_heatmap(sweep_result(), directory / "sweep"))
    standalone = directory / "sweep" / "standalone.html"
    standalone.write_text(sweep_heatmap(sweep_result()))
    pages.append(standalone)
    pages += write_em_figures(json.loads(json.dumps(em_results())), directory / "em")
    token = directory / "token.html"
    token.write_text(token_projection_html(["Hi", " there", "!"], [0.1, -0.5, 2.0], title="t", n_prompt=1,
                                           details={"model": "m"}))
    pages.append(token)
    return pages


def test_every_writer_and_every_shipped_page_opens_offline(tmp_path):
    pages = _writer_outputs(tmp_path)
    assert len(pages) == len(figure_kinds()) + 5
    shipped = sorted((ROOT / "docs").rglob("*.html"))
    assert shipped, "docs/ ships HTML figures (docs/results/**)"
    for page in pages + shipped:
        text = page.read_text(encoding="utf-8", errors="replace")
        assert vh.find_remote_loads(text) == [], page
        if "Plotly.newPlot" in text and "* plotly.js v" not in text[:10_000_000]:
            assert (page.parent / vh.PLOTLY_JS).is_file(), f"{page} loads plotly.min.js, which is not beside it"
