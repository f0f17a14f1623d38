"""Check the built documentation site: internal links, then a real browser.

    python docs/tools/check_site.py [SITE_DIR] [--screenshots DIR]

SITE_DIR is the output of ``mkdocs build`` (default ``site``). Two checks; the exit status is 1
if either finds a problem, and every problem is printed on its own line:

1. **Links.** Every ``href`` and ``src`` of every HTML page that points inside the site must
   name a file that exists, and its ``#fragment`` an ``id`` on that page. Nothing may be loaded
   from another host (the site has to work offline): a ``<script src>``, stylesheet, image or
   font from ``http(s)://`` is an error. Links *to* other sites are not followed.
2. **Browser.** The site is served on localhost and headless Chromium (the system's
   ``/usr/bin/chromium``, or ``$CHROMIUM``, driven by Playwright; no browser is downloaded)
   opens the home page, an estimator's API page and a guide with a figure, and searches. On
   each page: no console errors, no failed requests, the expected headings, every formula
   rendered by KaTeX (no ``.arithmatex`` element without KaTeX output, no ``.katex-error``, no
   raw ``\\(``, ``\\[``, ``$$`` or ``.. math::`` left in the text), every image loaded. A
   full-page screenshot of each goes to the screenshots folder (default ``site-check``).
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

# (path, headings that must be on the page, the least number of KaTeX formulas, an image)
PAGES = [
    ("", ["expectax", "Quick start", "Estimators", "Choosing an estimator"], 0, False),
    ("api/estimators/", ["Estimators", "ScoreFunction", "Pathwise", "MeasureValued"], 5, False),
    ("rl/", ["Policy gradients", "CartPole"], 1, True),
]
SEARCH = ("ScoreFunction", "api/estimators/")


# ------------------------------------------------------------------------------------ links
class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str, str]] = []  # (tag, attribute, url, rel)
        self.text: list[str] = []  # the text outside code, scripts and styles
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in _SKIP:
            self._skip += 1
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
        if tag in _SKIP and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


_SKIP = ("pre", "code", "script", "style", "textarea")
# reST that the docstrings use and griffe_rst.py converts: none of it may reach a page as text
_LEFTOVER_REST = re.compile(r"\.\. (math|code-block)::|:(math|class|func|meth|mod|data|attr):`")


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
        text = "".join(page.text)
        for m in _LEFTOVER_REST.finditer(text):
            snippet = " ".join(text[max(0, m.start() - 40) : m.end() + 40].split())
            problems.append(f"{path.relative_to(site)}: unconverted reST {snippet!r}")
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
_PAGE_STATE = """() => {
  const article = document.querySelector("article") || document.body;
  const clone = article.cloneNode(true);
  for (const el of clone.querySelectorAll("pre, code, .katex, script, style")) el.remove();
  const text = clone.innerText || clone.textContent;
  const raw = [];
  for (const pat of ["\\\\(", "\\\\[", "$$", ".. math::", ":math:`"]) {
    const at = text.indexOf(pat);
    if (at >= 0) raw.push(JSON.stringify(text.slice(Math.max(0, at - 30), at + 50)));
  }
  const arith = [...document.querySelectorAll(".arithmatex")];
  return {
    headings: [...document.querySelectorAll("h1, h2, h3")].map(h => h.textContent.trim()),
    arithmatex: arith.length,
    unrendered: arith.filter(el => !el.querySelector(".katex")).map(
      el => el.textContent.trim().slice(0, 60)),
    katex: document.querySelectorAll(".katex").length,
    katexErrors: document.querySelectorAll(".katex-error").length,
    raw: raw,
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


def check_browser(site: Path, shots: Path) -> list[str]:
    """Problems seen in headless Chromium, one line each; screenshots into ``shots``."""
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not Path(chromium).exists():
        return [f"browser: no Chromium at {chromium} (apt-get install chromium, or set $CHROMIUM)"]
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
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
            for path, headings, min_katex, image in PAGES:
                problems += _check_page(context, base, path, headings, min_katex, image, shots)
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


def _check_page(context, base, path, headings, min_katex, image, shots) -> list[str]:
    name = "/" + path
    errors: list[str] = []
    page = context.new_page()
    _watch(page, name, errors)
    page.goto(base + path, wait_until="networkidle")
    page.wait_for_timeout(300)  # let document$ subscribers (KaTeX) run
    state = page.evaluate(_PAGE_STATE)
    shot = shots / (path.strip("/").replace("/", "_") or "home")
    page.screenshot(path=f"{shot}.png", full_page=True)
    page.close()
    for heading in headings:
        if not any(heading in h for h in state["headings"]):
            errors.append(f"{name}: no heading containing {heading!r}")
    if state["unrendered"]:
        errors.append(
            f"{name}: {len(state['unrendered'])} formulas not rendered by KaTeX, "
            f"e.g. {state['unrendered'][0]!r}"
        )
    if state["katexErrors"]:
        errors.append(f"{name}: {state['katexErrors']} KaTeX errors (.katex-error)")
    if state["katex"] < min_katex:
        errors.append(f"{name}: {state['katex']} KaTeX formulas, expected at least {min_katex}")
    for snippet in state["raw"]:
        errors.append(f"{name}: raw maths left in the text: {snippet}")
    broken = [src for src, ok in state["images"] if not ok]
    if broken:
        errors.append(f"{name}: images not loaded: {broken}")
    if image and not state["images"]:
        errors.append(f"{name}: expected a figure, found no image")
    print(
        f"browser {name}: {len(state['headings'])} headings, {state['katex']} KaTeX formulas, "
        f"{len(state['images'])} images, {len(errors)} problems -> {shot}.png"
    )
    return errors


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
    page.screenshot(path=str(shots / "search.png"))
    page.close()
    print(
        f"browser search {query!r}: {found} results, {len(index['docs'])} indexed sections, "
        f"{len(errors)} problems -> {shots / 'search.png'}"
    )
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", nargs="?", default="site", type=Path, help="built site folder")
    parser.add_argument("--screenshots", default="site-check", type=Path, help="output folder")
    parser.add_argument("--no-browser", action="store_true", help="check the links only")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(
            f"check_site: {args.site}/index.html not found; run mkdocs build first", file=sys.stderr
        )
        return 2
    start = time.perf_counter()
    problems = check_links(args.site)
    if not args.no_browser:
        problems += check_browser(args.site, args.screenshots)
    for problem in problems:
        print(f"PROBLEM {problem}")
    verdict = "failed" if problems else "passed"
    print(f"check_site: {verdict}, {len(problems)} problems ({time.perf_counter() - start:.1f}s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
