"""Render figures in headless Chromium at a laptop window (1200 x 900) and measure what a reader sees.

One page holds every figure (one Chromium start for all); after plotly has drawn them, a script in the
page measures each figure's SVG and writes what it finds into ``<pre id="layout-report">``, which
``--dump-dom`` returns. A finding is a problem a reader would see: an element outside the canvas
(title, subtitle, subplot title, legend entry, colour bar, axis title or tick label), a legend that
scrolls (entries hidden), a legend over a plot area or over a title, overlapping titles, or a page
wider than the window.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from personaspace.viz import html as vh

WIDTH, HEIGHT = 1200, 900

_CHECK_JS = r"""
function rect(el) { const r = el.getBoundingClientRect(); return {l: r.left, t: r.top, r: r.right, b: r.bottom, w: r.width, h: r.height}; }
function inside(a, box, tol) { return a.l >= box.l - tol && a.r <= box.r + tol && a.t >= box.t - tol && a.b <= box.b + tol; }
function overlap(a, b, tol) {
  const w = Math.min(a.r, b.r) - Math.max(a.l, b.l), h = Math.min(a.b, b.b) - Math.max(a.t, b.t);
  return w > tol && h > tol;
}
function label(el) { return (el.textContent || el.getAttribute('class') || '').trim().slice(0, 60); }
function checkFigure(gd) {
  const problems = [];
  const svg = gd.querySelector('svg.main-svg');
  if (!svg) return ['not drawn'];
  const canvas = rect(svg);
  const tol = 1.5;
  const out = (sel, what) => gd.querySelectorAll(sel).forEach(el => {
    const r = rect(el);
    if (r.w === 0 && r.h === 0) return;
    if (!inside(r, canvas, tol)) problems.push(what + ' outside the canvas: "' + label(el) + '" ' + JSON.stringify(r) + ' canvas ' + JSON.stringify(canvas));
  });
  if (canvas.r > window.innerWidth + tol) problems.push('figure wider than the window: ' + canvas.w + ' px');
  out('.g-gtitle text.gtitle, .g-gtitle text.gtitle-subtitle', 'title');
  out('.infolayer .annotation .annotation-text-g', 'subplot title/annotation');
  out('.infolayer .g-xtitle text, .infolayer .g-ytitle text, .infolayer [class*="g-x"][class*="title"] text, .infolayer [class*="g-y"][class*="title"] text', 'axis title');
  out('.xtick text, .ytick text', 'tick label');
  out('.colorbar', 'colour bar');
  const legends = gd.querySelectorAll('.infolayer .legend');
  const plots = Array.from(gd.querySelectorAll('.draglayer .nsewdrag')).map(rect);
  const titles = Array.from(gd.querySelectorAll('.g-gtitle text.gtitle, .g-gtitle text.gtitle-subtitle, .infolayer .annotation .annotation-text-g')).map(el => [el, rect(el)]);
  legends.forEach(lg => {
    const bg = lg.querySelector('rect.bg');
    const box = bg ? rect(bg) : rect(lg);
    if (!inside(box, canvas, tol)) problems.push('legend outside the canvas ' + JSON.stringify(box) + ' canvas ' + JSON.stringify(canvas));
    const bar = lg.querySelector('.scrollbar');
    if (bar && rect(bar).h > 0) problems.push('legend scrolls: some entries are hidden');
    lg.querySelectorAll('.traces').forEach(tr => {
      const r = rect(tr);
      if (r.h === 0) return;
      if (!inside(r, canvas, tol) || !inside(r, box, tol + 2)) problems.push('legend entry cut: "' + label(tr) + '"');
    });
    plots.forEach(p => { if (overlap(box, p, 4)) problems.push('legend over a plot area ' + JSON.stringify(box)); });
    titles.forEach(([el, r]) => { if (overlap(box, r, 2)) problems.push('legend over the title "' + label(el) + '"'); });
  });
  const axisText = Array.from(gd.querySelectorAll('.infolayer [class*="title"] text, .xtick text, .ytick text'))
    .filter(el => !el.closest('.colorbar') && !el.closest('.g-gtitle')).map(el => [el, rect(el)]);
  gd.querySelectorAll('.colorbar').forEach(cb => {
    const r = rect(cb);
    axisText.forEach(([el, a]) => { if (overlap(r, a, 1)) problems.push('colour bar over "' + label(el) + '" ' + JSON.stringify(r) + JSON.stringify(a)); });
  });
  for (let i = 0; i < titles.length; i++) for (let j = i + 1; j < titles.length; j++)
    if (overlap(titles[i][1], titles[j][1], 2)) problems.push('titles overlap: "' + label(titles[i][0]) + '" / "' + label(titles[j][0]) + '"');
  return problems;
}
function runChecks() {
  const report = {window: [window.innerWidth, window.innerHeight], scrollWidth: document.documentElement.scrollWidth, figures: {}};
  document.querySelectorAll('.figure[data-kind]').forEach(div => {
    const gd = div.querySelector('.js-plotly-plot');
    report.figures[div.dataset.kind] = gd ? checkFigure(gd) : ['not drawn'];
    if (gd) report.figures[div.dataset.kind + ':width'] = [rect(gd.querySelector('svg.main-svg') || gd).w];
  });
  document.getElementById('layout-report').textContent = JSON.stringify(report);
}
window.addEventListener('load', () => setTimeout(runChecks, 1500));
"""


def figures_page(figures: dict[str, Any]) -> str:
    """The body of a page with every figure in a full-width div, and the measuring script."""
    divs = "\n".join(f'<div class="figure" data-kind="{html.escape(k)}">{vh.figure_html(f)}</div>' for k, f in figures.items())
    return f'{divs}\n<pre id="layout-report"></pre>\n<script>{_CHECK_JS}</script>'


def render_report(figures: dict[str, Any], directory: Path, chromium: str) -> dict[str, Any]:
    """Draw ``figures`` in one page at 1200 x 900 and return the measurements (see module doc)."""
    page = vh.write_page(directory / "figures.html", "figures", figures_page(figures), heading=False,
                         css="body { max-width: none; margin: 0.5em; padding: 0; }")
    cmd = vh.chromium_command(chromium, f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={directory / 'chrome'}",
                              "--virtual-time-budget=30000", "--dump-dom", page.as_uri())
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=240).stdout
    m = re.search(r'<pre id="layout-report">(.*?)</pre>', dom, re.S)
    if not m or not m.group(1).strip():
        raise AssertionError(f"the checks did not run in Chromium; DOM starts {dom[:300]!r}")
    return json.loads(html.unescape(m.group(1)))
