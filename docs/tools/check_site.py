"""Check the built documentation site, every page of it: the HTML, then a real browser.

    python docs/tools/check_site.py [SITE_DIR] [--screenshots DIR] [--no-browser]

SITE_DIR is the output of ``mkdocs build`` (default ``site``). Two checks; the exit status is 1
if either finds a problem, and every problem is printed on its own line:

1. **The HTML of every page.** Every ``href`` and ``src`` that points inside the site must name
   a file that exists (a missing image is an error), and its ``#fragment`` an ``id`` on that
   page (a broken anchor is an error). Nothing may be loaded from another host (the site has
   to work offline): a ``<script src>``, stylesheet, image or font from ``http(s)://`` is an
   error; links *to* other sites are not followed. In the text outside code and outside the
   formulas (``.arithmatex``): no raw TeX (``$$``, ``\\frac``, ``\\mathbb``, ``\\(``, ``\\[``),
   no unconverted reST (``.. math::``, ``:func:`...```, a literal block's ``::``), no
   attribute-list text (``{:``, ``{.``, ``{#``: Markdown's ``attr_list`` did not apply it).
2. **Every page in a browser.** The site is served on localhost and headless Chromium (the
   system's ``/usr/bin/chromium``, or ``$CHROMIUM``, driven by Playwright; no browser is
   downloaded) opens every HTML page of the site, then searches. On each page: no console
   errors, no failed requests, every formula rendered by KaTeX (no ``.arithmatex`` element
   without KaTeX output, no ``.katex-error``), no raw TeX or attribute text left in the visible
   text (as above, with rendered formulas and code removed), every image loaded. A few pages
   must also have their expected headings, formulas and a figure (``PAGES``). A full-page
   screenshot of those pages, and of every page with a problem, goes to the screenshots
   folder (default ``site-check``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Pages that must hold more than "no problems": (path, headings that must be on the page,
# the least number of KaTeX formulas, an image). Every other page is checked too.
PAGES = [
    ("", ["expectax", "Quick start", "Estimators", "Choosing an estimator"], 0, False),
    ("getting-started/", ["Getting started", "Install", "compare"], 3, False),
    ("api/estimators/", ["Estimators", "ScoreFunction", "Pathwise", "MeasureValued"], 5, False),
    ("measure-valued/", ["Measure-valued derivatives", "Supported distributions"], 5, True),
    ("variance-reduction/", ["Variance reduction", "Baselines", "Control variates"], 5, False),
    ("rl/", ["Policy gradients", "CartPole"], 1, True),
    ("search/", ["Search"], 0, False),
]
SEARCH = ("ScoreFunction", "api/estimators/")


# ------------------------------------------------------------------------------------ links
class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str, str]] = []  # (tag, attribute, url, rel)
        self.text: list[str] = []  # the text outside code, scripts, styles and formulas
        self._skip: list[list] = []  # [tag, how deep that tag is nested] of a skipped element

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if self._skip and tag == self._skip[-1][0]:
            self._skip[-1][1] += 1
        elif tag in _SKIP or _SKIP_CLASS & set((a.get("class") or "").split()):
            if tag not in _VOID:
                self._skip.append([tag, 1])
        for key in ("id", "name"):
            if a.get(key) and (key == "id" or tag == "a"):
                self.ids.add(a[key])
        rel = a.get("rel") or ""
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append((tag, key, a[key], rel))
        if a.get("srcset"):
            for part in a["srcset"].split(","):
                if part.strip():
                    self.refs.append((tag, "srcset", part.split()[0], rel))

    def handle_endtag(self, tag: str) -> None:
        if self._skip and tag == self._skip[-1][0]:
            self._skip[-1][1] -= 1
            if not self._skip[-1][1]:
                self._skip.pop()

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


_SKIP = ("pre", "code", "script", "style", "textarea", "svg")
_SKIP_CLASS = {"arithmatex", "katex", "highlight"}  # formulas (rendered or not yet), code
_VOID = (
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
)
# What must not reach a page as text, each with what it means. reST that the docstrings use
# and griffe_rst.py converts; TeX that KaTeX never saw (outside $…$, or in a code span); the
# text of an attribute list that Markdown's attr_list did not apply ("{: .class}", "{#id}").
LEFTOVERS = [
    (
        re.compile(r"\.\. (math|code-block)::|:(math|class|func|meth|mod|data|attr):`"),
        "unconverted reST",
    ),
    (re.compile(r"\w::(\s|$)"), "a reST literal block's '::'"),
    (re.compile(r"\$\$|\\frac\b|\\mathbb\b|\\\(|\\\["), "raw TeX (not rendered)"),
    (re.compile(r"\{[:.#]"), "attribute-list text"),
]


def leftovers(text: str) -> list[str]:
    """``what: 'snippet'`` for each leftover of ``LEFTOVERS`` in ``text``."""
    found = []
    for pattern, what in LEFTOVERS:
        for m in pattern.finditer(text):
            snippet = " ".join(text[max(0, m.start() - 40) : m.end() + 40].split())
            found.append(f"{what}: {snippet!r}")
    return found


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(errors="replace"))
    return page


def check_links(site: Path) -> list[str]:
    """Problems with the site's internal links and external resources, one line each."""
    problems: list[str] = []
    pages = {p: _parse(p) for p in sorted(site.rglob("*.html"))}
    checked = 0
    for path, page in pages.items():
        page_url = "/" + path.relative_to(site).as_posix()
        for found in leftovers("".join(page.text)):
            problems.append(f"{path.relative_to(site)}: {found}")
        for tag, attr, url, rel in page.refs:
            parts = urlsplit(url)
            where = f"{path.relative_to(site)}: <{tag} {attr}={url!r}>"
            if parts.scheme in ("mailto", "javascript", "data", "tel"):
                continue
            if parts.scheme or url.startswith("//"):
                # a link to another site is fine; a script, image, stylesheet, font or
                # preconnect from one is not (a canonical or alternate <link> loads nothing)
                if tag != "a" and rel not in ("canonical", "alternate"):
                    problems.append(f"{where}: loads a resource from another host")
                continue
            target_url = urlsplit(urljoin(page_url, url))
            target = site / unquote(target_url.path).lstrip("/")
            if target_url.path.endswith("/") or target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.is_file():
                problems.append(f"{where}: no such file {target.relative_to(site)}")
                continue
            fragment = unquote(target_url.fragment)
            if fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if fragment not in ids:
                    problems.append(f"{where}: no id {fragment!r} in {target.relative_to(site)}")
    print(
        f"links: {checked} internal links and resources on {len(pages)} pages checked, "
        f"{len(problems)} problems"
    )
    return problems


# ---------------------------------------------------------------------------------- browser
_RENDERED = """() => [...document.querySelectorAll(".arithmatex")].every(
  el => el.querySelector(".katex"))"""
_PAGE_STATE = """() => {
  const article = document.querySelector("article") || document.body;
  const clone = article.cloneNode(true);
  for (const el of clone.querySelectorAll(
      "pre, code, .katex, .arithmatex, .highlight, script, style, svg")) el.remove();
  const arith = [...document.querySelectorAll(".arithmatex")];
  return {
    headings: [...document.querySelectorAll("h1, h2, h3")].map(h => h.textContent.trim()),
    text: clone.textContent,
    arithmatex: arith.length,
    unrendered: arith.filter(el => !el.querySelector(".katex")).map(
      el => el.textContent.trim().slice(0, 60)),
    katex: document.querySelectorAll(".katex").length,
    katexErrors: [...document.querySelectorAll(".katex-error")].map(
      el => (el.getAttribute("title") || el.textContent).slice(0, 100)),
    images: [...document.querySelectorAll("article img")].map(
      img => [img.getAttribute("src"), img.complete && img.naturalWidth > 0]),
  };
}"""


def _serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def site_pages(site: Path) -> list[str]:
    """The URL path of each HTML page ("" for the home page, "rl/" for rl/index.html)."""
    paths = []
    for path in sorted(site.rglob("*.html")):
        rel = path.relative_to(site).as_posix()
        if rel.startswith("assets/"):
            continue
        paths.append(rel.removesuffix("index.html"))
    return paths


def check_browser(site: Path, shots: Path, only: list[str] | None = None) -> list[str]:
    """Problems seen in headless Chromium on every page, one line each; screenshots to ``shots``."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        return [f"browser: no Chromium at {chromium} (apt-get install chromium, or set $CHROMIUM)"]
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    expected = {path: rest for path, *rest in PAGES}
    paths = site_pages(site)
    for path in expected:
        if path not in paths:
            problems.append(f"/{path}: page not in the site")
    if only:  # a quick look at a few pages while writing them (CI checks every page)
        paths = [p for p in paths if p.strip("/") in {o.strip("/") for o in only}]
    server, base = _serve(site)
    try:
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900},
            )
            katex = 0
            for path in paths:
                headings, min_katex, image = expected.get(path, ([], 0, False))
                found, n = _check_page(
                    context, base, path, headings, min_katex, image, shots, path in expected
                )
                problems += found
                katex += n
            print(f"browser: {len(paths)} pages, {katex} KaTeX formulas")
            problems += _check_search(context, base, shots)
            context.close()
    finally:
        server.shutdown()
    return problems


def _watch(page, name: str, errors: list[str]) -> None:
    page.on(
        "console",
        lambda m: (
            errors.append(f"{name}: console {m.type}: {m.text}")
            if m.type in ("error", "assert")
            else None
        ),
    )
    page.on("pageerror", lambda e: errors.append(f"{name}: uncaught {e}"))
    page.on("requestfailed", lambda r: errors.append(f"{name}: request failed {r.url}"))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{name}: HTTP {r.status} for {r.url}") if r.status >= 400 else None
        ),
    )


def _check_page(context, base, path, headings, min_katex, image, shots, shoot):
    """(problems, number of formulas) of one page; a screenshot if ``shoot`` or a problem."""
    name = "/" + path
    errors: list[str] = []
    page = context.new_page()
    _watch(page, name, errors)
    page.goto(base + path, wait_until="networkidle")
    try:  # let document$ subscribers (KaTeX) run: every formula rendered, or 5 s
        page.wait_for_function(_RENDERED, timeout=5000)
    except Exception:
        pass  # what is still unrendered is reported below
    state = page.evaluate(_PAGE_STATE)
    for heading in headings:
        if not any(heading in h for h in state["headings"]):
            errors.append(f"{name}: no heading containing {heading!r}")
    if state["unrendered"]:
        errors.append(
            f"{name}: {len(state['unrendered'])} formulas not rendered by KaTeX, "
            f"e.g. {state['unrendered'][0]!r}"
        )
    for error in state["katexErrors"]:
        errors.append(f"{name}: KaTeX error (.katex-error): {error!r}")
    if state["katex"] < min_katex:
        errors.append(f"{name}: {state['katex']} KaTeX formulas, expected at least {min_katex}")
    for found in leftovers(state["text"]):
        errors.append(f"{name}: {found}")
    broken = [src for src, ok in state["images"] if not ok]
    if broken:
        errors.append(f"{name}: images not loaded: {broken}")
    if image and not state["images"]:
        errors.append(f"{name}: expected a figure, found no image")
    shot = None
    if shoot or errors:
        shot = shots / ((path.strip("/").replace("/", "_").removesuffix(".html")) or "home")
        page.screenshot(path=f"{shot}.png", full_page=True)
    page.close()
    if shoot or errors:
        print(
            f"browser {name}: {len(state['headings'])} headings, {state['katex']} KaTeX "
            f"formulas, {len(state['images'])} images, {len(errors)} problems -> {shot}.png"
        )
    return errors, state["katex"]


def _check_search(context, base, shots) -> list[str]:
    """Material's search box finds ``query``, and the API page is in the search index."""
    query, expected = SEARCH
    errors: list[str] = []
    page = context.new_page()
    _watch(page, "search", errors)
    page.goto(base, wait_until="networkidle")
    page.keyboard.press("s")  # material's shortcut: focus the search box
    page.locator("input.md-search__input").press_sequentially(query, delay=50)
    try:
        page.wait_for_selector(".md-search-result__item", timeout=10_000)
    except Exception:
        errors.append(f"search: no results for {query!r}")
    found = page.locator(".md-search-result__item").count()
    index = page.evaluate("async () => (await (await fetch('search/search_index.json')).json())")
    if not any(d["location"].startswith(f"{expected}#expectax.{query}") for d in index["docs"]):
        errors.append(f"search: the index has no entry for {expected}#expectax.{query}")
    page.screenshot(path=str(shots / "search-box.png"))
    page.close()
    print(
        f"browser search {query!r}: {found} results, {len(index['docs'])} indexed sections, "
        f"{len(errors)} problems -> {shots / 'search-box.png'}"
    )
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", nargs="?", default="site", type=Path, help="built site folder")
    parser.add_argument("--screenshots", default="site-check", type=Path, help="output folder")
    parser.add_argument("--no-browser", action="store_true", help="check the HTML only")
    parser.add_argument(
        "--only", nargs="+", metavar="PATH", help="open only these pages (e.g. rl/) in the browser"
    )
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(
            f"check_site: {args.site}/index.html not found; run mkdocs build first", file=sys.stderr
        )
        return 2
    start = time.perf_counter()
    problems = check_links(args.site)
    if not args.no_browser:
        problems += check_browser(args.site, args.screenshots, args.only)
    for problem in problems:
        print(f"PROBLEM {problem}")
    verdict = "failed" if problems else "passed"
    print(f"check_site: {verdict}, {len(problems)} problems ({time.perf_counter() - start:.1f}s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
