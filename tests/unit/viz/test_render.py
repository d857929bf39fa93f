"""Every figure kind drawn in headless Chromium at 1200 x 900, offline: titles, legends, colour bars and
axis labels inside the canvas, no legend that scrolls or covers a plot or a title, no page wider than
the window (see render_check.py). Skipped where Chromium is not installed (``.ci/run`` installs it)."""

from __future__ import annotations

import pytest
from figure_kinds import figure_kinds
from render_check import WIDTH, render_report

from personaspace.viz.html import find_chromium


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it")
    return binary


def test_every_figure_kind_fits_a_1200_px_window(chromium, tmp_path):
    figures = figure_kinds()
    report = render_report(figures, tmp_path, chromium)
    assert report["window"][0] == WIDTH and report["scrollWidth"] <= WIDTH  # nothing scrolls sideways
    problems = {k: v for k, v in report["figures"].items() if not k.endswith(":width") and v}
    assert not problems, problems
    assert set(figures) <= set(report["figures"])
    for kind in figures:
        assert WIDTH - 40 <= report["figures"][f"{kind}:width"][0] <= WIDTH, kind  # fills the window


def test_the_check_sees_a_clipped_legend_and_a_wide_figure(chromium, tmp_path):
    """The measurement can fail: a figure 1300 px wide with a 21-entry legend in 360 px is caught."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=[0, 1], y=[i, i + 1], name=f"trait number {i}") for i in range(21)])
    fig.update_layout(width=1300, height=360, title="a title")
    problems = render_report({"bad": fig}, tmp_path, chromium)["figures"]["bad"]
    assert any("wider than the window" in p for p in problems)
    assert any("legend scrolls" in p for p in problems) and any("legend entry cut" in p for p in problems)
