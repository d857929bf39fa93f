"""The one place that writes HTML pages: every page opens offline, with nothing loaded from the network.

Plotly figures need plotly.js (4.8 MB). Either it is written once beside the pages, as
:data:`PLOTLY_JS` (``plotly.min.js``, by :func:`ensure_plotly_js`), and each page loads it with a relative
``<script src>``; or (``inline_plotly=True``) one page embeds it, so that the single file can be
shared alone. Pages carry their CSS inline and use the system's fonts.

* :func:`figure_html`: the ``<div>`` and ``<script>`` of one figure, without plotly.js, to put in a page.
* :func:`page_html` / :func:`write_page`: a full page around any body (figures, tables, text).
* :func:`write_figure`: one figure as a full page, loading the ``plotly.min.js`` beside it.
* :func:`find_remote_loads`: the network loads of a page (scripts, stylesheets, fonts, imports), which
  the tests require to be none.
"""

from __future__ import annotations

import functools
import html as _html
import os
import re
import shutil
from pathlib import Path
from typing import Any

from personaspace._util.io import atomic_path, write_text

__all__ = [
    "PLOTLY_JS",
    "ensure_plotly_js",
    "figure_html",
    "page_html",
    "write_page",
    "write_figure",
    "find_remote_loads",
    "find_chromium",
    "chromium_command",
]

PLOTLY_JS = "plotly.min.js"

#: Plotly's modebar options for every figure: resizes with the window, no plotly logo.
FIGURE_CONFIG: dict[str, Any] = {"responsive": True, "displaylogo": False}

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 1.5em auto; padding: 0 1.5em; max-width: 80em; color: #222; line-height: 1.5; background: #fff; }
h1 { font-size: 1.6em; margin: 0.4em 0; } h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.1em; margin-top: 1.2em; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
                   font-size: 0.92em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.figure { width: 100%; margin: 1em 0; }
.muted { color: #666; } .small { font-size: 0.88em; }
a { color: #0b62a4; }
"""


@functools.lru_cache(maxsize=1)
def _plotly_js() -> str:
    """plotly's bundled plotly.js (4.8 MB), read from the package once per process."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _plotly_banner() -> str:
    """The version line plotly.js starts with (``* plotly.js v4.1.1``), from the installed plotly."""
    from plotly.offline.offline import get_plotlyjs_version

    return f"plotly.js v{get_plotlyjs_version()}\n"


def ensure_plotly_js(directory: str | os.PathLike) -> Path:
    """Write plotly's bundled ``plotly.min.js`` into ``directory`` once; its path.

    The file is rewritten only when missing, of another plotly.js version, or incomplete (another size);
    the write is atomic, so concurrent writers and a kill leave a whole file.
    """
    directory = Path(directory).expanduser()
    path = directory / PLOTLY_JS
    banner = _plotly_banner()
    if path.is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(200).decode("utf-8", errors="replace")
            if banner in head and path.stat().st_size == len(_plotly_js().encode("utf-8")):  # cached text
                return path
        except OSError:
            pass
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(_plotly_js().encode("utf-8"))  # bytes: no newline translation, the size check holds
    return path


def figure_html(fig: Any, *, div_id: str | None = None, static: bool = False) -> str:
    """The ``<div>`` and ``<script>`` drawing ``fig``, without plotly.js (the page must load it).

    The figure fills its container's width (a figure laid out with a fixed ``width`` keeps it) and keeps
    its layout height; the modebar has no plotly logo. ``static=True`` draws it without modebar or
    hover (for screenshots).
    """
    height = fig.layout.height
    config = dict(FIGURE_CONFIG, staticPlot=True, displayModeBar=False) if static else FIGURE_CONFIG
    return str(
        fig.to_html(
            include_plotlyjs=False,
            full_html=False,
            config=config,
            div_id=div_id,
            default_width="100%",
            default_height=f"{int(height)}px" if height else "100%",
        )
    )


def _uses_plotly(body_html: str) -> bool:
    return "Plotly.newPlot" in body_html or "Plotly.react" in body_html


def page_html(title: str, body_html: str, *, inline_plotly: bool, css: str = "", heading: bool = True) -> str:
    """A full HTML page that opens offline: ``body_html`` under an ``<h1>`` of ``title`` (unless
    ``heading=False``), readable CSS inline (plus ``css``), system fonts.

    When the body draws plotly figures, the page embeds plotly.js (``inline_plotly=True``: one file to
    share) or loads :data:`PLOTLY_JS` from its own directory (see :func:`ensure_plotly_js`).
    """
    plotly = ""
    if _uses_plotly(body_html):
        if inline_plotly:
            plotly = f'<script type="text/javascript">{_plotly_js()}</script>\n'
        else:
            plotly = f'<script type="text/javascript" src="{PLOTLY_JS}"></script>\n'
    h1 = f"<h1>{_html.escape(title)}</h1>\n" if heading else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_html.escape(title)}</title>\n<style>{CSS}{css}</style>\n{plotly}</head>\n"
        f"<body>\n{h1}{body_html}\n</body>\n</html>\n"
    )


def write_page(
    path: str | os.PathLike,
    title: str,
    body_html: str,
    *,
    inline_plotly: bool = False,
    css: str = "",
    heading: bool = True,
) -> Path:
    """Write :func:`page_html` to ``path`` atomically (and ``plotly.min.js`` beside it when the page
    draws figures and does not embed plotly.js); the page's path."""
    path = Path(path).expanduser()
    text = page_html(title, body_html, inline_plotly=inline_plotly, css=css, heading=heading)
    if not inline_plotly and _uses_plotly(body_html):
        ensure_plotly_js(path.parent)
    write_text(path, text)
    return path


def _figure_title(fig: Any) -> str:
    text = fig.layout.title.text if fig.layout.title is not None else None
    if not text:
        return "figure"
    return re.sub(r"<[^>]+>", " ", str(text)).split("  ")[0].strip() or "figure"


def write_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a full page at ``path`` that loads the ``plotly.min.js`` beside it (written
    once by :func:`ensure_plotly_js`); the page's path. The page is the figure alone, full width."""
    body = f'<div class="figure">{figure_html(fig)}</div>'
    return write_page(path, _figure_title(fig), body, inline_plotly=False, css="body { max-width: none; margin: 0.5em; padding: 0; }",
                      heading=False)


# --------------------------------------------------------------------------------------------
# checking


_REMOTE = r"(?:https?:)?//"
_CDN_HOSTS = ("cdn.plot.ly", "cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "fonts.googleapis.com",
              "fonts.gstatic.com", "ajax.googleapis.com", "code.jquery.com", "mathjax", "polyfill.io")
_REMOTE_PATTERNS = (
    ("script", re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?" + _REMOTE, re.I)),
    ("stylesheet/font/preload", re.compile(
        r"<link\b(?=[^>]*\brel\s*=\s*[\"']?(?:stylesheet|preload|prefetch|modulepreload|icon|import|font))"
        r"[^>]*\bhref\s*=\s*[\"']?" + _REMOTE, re.I)),
    ("link before rel", re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?" + _REMOTE + r"[^>]*\brel\s*=\s*[\"']?"
                                   r"(?:stylesheet|preload|prefetch|modulepreload|icon|import|font)", re.I)),
    ("css import", re.compile(r"@import\s+(?:url\()?\s*[\"']?" + _REMOTE, re.I)),
    ("css url", re.compile(r"url\(\s*[\"']?" + _REMOTE, re.I)),
    ("embedded media", re.compile(r"<(?:img|iframe|video|audio|source|embed|object)\b[^>]*\b(?:src|data)\s*=\s*[\"']?"
                                  + _REMOTE, re.I)),
    ("javascript import", re.compile(r"\bimport\s*\(\s*[\"']" + _REMOTE, re.I)),
)


def find_remote_loads(text: str) -> list[str]:
    """What ``text`` (an HTML page) would load from the network: scripts, stylesheets, fonts, CSS
    imports, embedded media, known CDN hosts in a ``src``/``href``. Plain links (``<a href>``) are fine.

    Each finding is ``"KIND: SNIPPET"``; an empty list means the page opens offline. Plotly.js embedded
    inline is not scanned (its source mentions URLs it never loads by itself).
    """
    found: list[str] = []
    # the embedded plotly.js bundle holds URL strings in code (e.g. the mapbox and topojson defaults) that
    # a page never fetches unless a figure asks for them; scan the page around it
    scrubbed = re.sub(r"<script\b[^>]*>\s*/\*\*\s*\* plotly\.js v.*?</script>", "<script></script>", text,
                      flags=re.S | re.I)
    for kind, pattern in _REMOTE_PATTERNS:
        for m in pattern.finditer(scrubbed):
            found.append(f"{kind}: {scrubbed[m.start():m.end() + 60]!r}")
    for host in _CDN_HOSTS:
        for m in re.finditer(r"\b(?:src|href)\s*=\s*[\"']?[^\"'>\s]*" + re.escape(host), scrubbed, re.I):
            start = scrubbed.rfind("<", 0, m.start())
            if not re.match(r"<a\b", scrubbed[start:start + 3], re.I):
                found.append(f"cdn host {host}: {scrubbed[m.start():m.end() + 40]!r}")
    return found


# --------------------------------------------------------------------------------------------
# headless Chromium (PNG export and the rendering checks)


def find_chromium() -> str | None:
    """A headless-capable Chromium/Chrome on the PATH (``$PERSONASPACE_CHROMIUM`` wins), or None."""
    env = os.environ.get("PERSONASPACE_CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_command(binary: str, *args: str) -> list[str]:
    """Headless Chromium with no network (so a page that needs one fails visibly) and no sandbox for root."""
    cmd = [binary, "--headless", "--disable-gpu", "--hide-scrollbars", "--mute-audio", "--no-first-run",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--no-sandbox")
    return cmd + list(args)
