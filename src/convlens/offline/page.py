"""The explainer's page as ONE HTML document, built from the web front end's own files.

``static/index.html`` is read and every file it loads is put inside it: the stylesheet (with
any ``url()`` it names, e.g. a font, as a data URL), any classic scripts (none today) and the
ES modules from ``main.js`` down. The modules are not merged into one scope: each keeps its own
source, and a small loader gives each a ``blob:`` URL after its dependencies, rewriting the
relative specifiers (``'./api.js'``) to those URLs. Module semantics (scope, evaluation order,
live bindings) therefore stay exactly those of the served page, with no bundler and no node.

A page built here talks to no server: a ``transport`` script sets ``globalThis.
convlensTransport`` (see ``static/js/api.js``) before the modules run.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convlens.errors import ConvlensError

STATIC = Path(__file__).resolve().parents[1] / "web" / "static"
HERE_JS = Path(__file__).resolve().parent / "js"
MODULE_URL = "convlens-module:"  # placeholder for a module's blob URL in its importers' text

# `import … from './x.js'`, `export … from './x.js'`, `import './x.js'`, `import('./x.js')`
_SPECIFIER = re.compile(
    r"""(?P<head>\bimport\s*\(\s*|\bimport\s+|\bfrom\s*)(?P<q>['"])(?P<spec>\.{1,2}/[^'"\n]+)(?P=q)"""
)
_LINK_PRELOAD = re.compile(r"""<link\b[^>]*\brel=["'](?:preload|modulepreload)["'][^>]*>\s*""")
_STYLESHEET = re.compile(r"""<link\b[^>]*\brel=["']stylesheet["'][^>]*>""")
_SCRIPT = re.compile(
    r"""<script\b(?P<attrs>[^>]*)\bsrc=["'](?P<src>[^"']+)["'][^>]*>\s*</script>"""
)
_HREF = re.compile(r"""\bhref=["'](?P<href>[^"']+)["']""")
_CSS_URL = re.compile(r"""url\(\s*(?P<q>['"]?)(?P<url>[^'")]+)(?P=q)\s*\)""")
_LOCAL_REF = re.compile(r"""\b(?:src|href)=["'](?P<url>/[^"']*)["']""")


@dataclass(frozen=True)
class PageParts:
    """The front end read from disk: the HTML shell, its inline stylesheet, and its scripts."""

    html: str  # index.html without the tags that load files
    css: str
    classic: list[tuple[str, str]]  # (name, source), run in order before the modules
    modules: dict[str, str]  # name (relative to static/) -> source with specifiers rewritten
    entry: str


def _static_file(url: str, static: Path) -> Path:
    """The file under ``static`` that a page URL (``/static/js/main.js``, ``js/x.js``) names."""
    rel = url.split("?", 1)[0].split("#", 1)[0]
    rel = rel.removeprefix("/static/").lstrip("/")
    path = (static / rel).resolve()
    if not path.is_relative_to(static.resolve()) or not path.is_file():
        raise ConvlensError(f"the front end names {url!r}, which is not a file under {static}")
    return path


def _data_url(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _inline_css(path: Path, static: Path) -> str:
    """The stylesheet with each local ``url()`` (fonts, images) replaced by a data URL."""
    css = path.read_text(encoding="utf-8")

    def repl(m: re.Match[str]) -> str:
        url = m["url"].strip()
        if url.startswith(("data:", "#")):
            return m[0]
        if "://" in url or url.startswith("//"):
            raise ConvlensError(f"{path.name} loads {url!r} from the network; embed it instead")
        return f'url("{_data_url((path.parent / url).resolve())}")'

    return _CSS_URL.sub(repl, css)


def _collect_modules(entry: Path, static: Path) -> dict[str, str]:
    """``entry`` and every module it imports (relative specifiers only), sources rewritten."""
    modules: dict[str, str] = {}
    visiting: list[str] = []

    def visit(path: Path) -> str:
        name = path.relative_to(static.resolve()).as_posix()
        if name in modules:
            return name
        if name in visiting:
            cycle = " → ".join([*visiting[visiting.index(name) :], name])
            raise ConvlensError(f"the front end's modules import each other in a cycle: {cycle}")
        visiting.append(name)
        source = path.read_text(encoding="utf-8")

        def repl(m: re.Match[str]) -> str:
            dep = (path.parent / m["spec"]).resolve()
            if not dep.is_relative_to(static.resolve()) or not dep.is_file():
                raise ConvlensError(f"{name} imports {m['spec']!r}, which is not a file")
            return f"{m['head']}{m['q']}{MODULE_URL}{visit(dep)}{m['q']}"

        modules[name] = _SPECIFIER.sub(repl, source)
        visiting.pop()
        return name

    visit(entry.resolve())
    return modules


def read_front_end(static: Path = STATIC) -> PageParts:
    """Read ``static/index.html`` and everything it loads."""
    html = (static / "index.html").read_text(encoding="utf-8")
    html = _LINK_PRELOAD.sub("", html)
    css: list[str] = []

    def stylesheet(m: re.Match[str]) -> str:
        href = _HREF.search(m[0])
        if href is None:
            raise ConvlensError(f"a stylesheet link without href in index.html: {m[0]}")
        css.append(_inline_css(_static_file(href["href"], static), static))
        return ""

    html = _STYLESHEET.sub(stylesheet, html)
    classic: list[tuple[str, str]] = []
    entries: list[Path] = []

    def script(m: re.Match[str]) -> str:
        path = _static_file(m["src"], static)
        if "module" in m["attrs"]:
            entries.append(path)
        else:
            classic.append((path.name, path.read_text(encoding="utf-8")))
        return ""

    html = _SCRIPT.sub(script, html)
    if len(entries) != 1:
        raise ConvlensError(f"index.html should load one module script; found {len(entries)}")
    left = _LOCAL_REF.search(html)
    if left is not None:
        raise ConvlensError(f"index.html still names {left['url']!r}, which a file page lacks")
    modules = _collect_modules(entries[0], static)
    entry = entries[0].resolve().relative_to(static.resolve()).as_posix()
    return PageParts(html, "\n".join(css), classic, modules, entry)


def script_json(doc: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` can end it)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _inline_script(source: str) -> str:
    if re.search(r"</script", source, re.IGNORECASE):
        raise ConvlensError("an inline script may not contain '</script'")
    return source


def build_page(
    transport: str,
    data: Any = None,
    *,
    head: str = "",
    parts: PageParts | None = None,
) -> str:
    """The explainer as one HTML document whose API is ``transport`` (a classic script that
    sets ``globalThis.convlensTransport``); ``data`` goes in ``#convlens-data`` as JSON for
    it; ``head`` is extra markup for ``<head>`` (a style rule of the host)."""
    parts = parts or read_front_end()
    table = {
        "entry": parts.entry,
        "classic": [name for name, _ in parts.classic],
        "scripts": dict(parts.classic),
        "modules": parts.modules,
        "prefix": MODULE_URL,
    }
    css = parts.css.replace("</", "<\\/")  # a stylesheet cannot end its own <style> early
    pieces = [
        f"<style>\n{css}\n</style>",
        head,
        f'<script id="convlens-modules" type="application/json">{script_json(table)}</script>',
    ]
    if data is not None:
        pieces.append(
            f'<script id="convlens-data" type="application/json">{script_json(data)}</script>'
        )
    pieces.append(f"<script>\n{_inline_script(transport)}\n</script>")
    pieces.append(f'<script type="module">\n{_inline_script(js_asset("loader.js"))}\n</script>')
    html = parts.html
    at = html.lower().find("</head>")
    if at < 0:
        raise ConvlensError("index.html has no </head>")
    return html[:at] + "\n".join(pieces) + "\n" + html[at:]


def js_asset(name: str) -> str:
    """One of this package's own scripts (``convlens/offline/js``)."""
    return (HERE_JS / name).read_text(encoding="utf-8")
