"""mkdocs hooks for the expectax site (``hooks:`` in mkdocs.yml).

1. KaTeX, offline: the first build fetches the pinned ``katex`` package from the npm registry
   with ``npm pack`` (checked against its sha512), and unpacks its ``dist/`` into
   ``docs/assets/katex/`` (git-ignored). Later builds reuse it; the site loads nothing from a CDN.
2. Includes: a line ``<!-- include: ../README.md -->`` in a page is replaced by that file, its
   relative links rewritten for the page (the home page is the README, the changelog page the
   CHANGELOG; nothing is copied by hand, so nothing goes stale).
3. Links out of ``docs/``: a relative link to a file of the repository outside ``docs/``
   (``../src/expectax/vi/vae.py``) points to the repository (``repo_url``, set from the
   environment variable ``DOCS_REPO_URL``), or becomes plain text when no URL is set. A link
   whose target does not exist is left alone, so ``mkdocs build --strict`` reports it.
4. Executed examples: every guide's ```` ```python ```` blocks run when the site is built, with
   the rules of ``tests/test_docs_examples.py`` (in order, one namespace per page, a block
   right after ``<!-- no-run -->`` skipped, run in a temporary directory). What a block prints
   is shown under it as "Output (run when this site was built)". A block that raises stops the
   build with the page, the line and the error.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_blocks import python_blocks  # noqa: E402 - the parser tests/test_docs_examples.py uses

KATEX_VERSION = "0.16.22"
KATEX_SHA512 = (
    "XCHRdUw4lf3SKBaJe4EvgqIuWwkPSo9XoeO8GjQW94Bp7TWv9hNhzZjZ+OH9yf1UmLygb7DIT5GSFQiyt16zYg=="
)
KATEX_FILES = ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js")

INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->[ \t]*$", flags=re.M)
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")

_state: dict = {}


# ----------------------------------------------------------------------------------- KaTeX
def _katex_ready(dest: Path) -> bool:
    return all((dest / f).is_file() for f in KATEX_FILES) and (dest / "fonts").is_dir()


def ensure_katex(dest: Path) -> None:
    """Unpack KaTeX's dist/ into ``dest`` from the npm registry unless it is there already."""
    if _katex_ready(dest):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError(
            f"KaTeX {KATEX_VERSION} is not in {dest} and npm is not installed to fetch it: "
            "install npm (apt-get install npm) or unpack the npm package katex@"
            f"{KATEX_VERSION}'s dist/ folder there"
        )
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [npm, "pack", f"katex@{KATEX_VERSION}", "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
        )
        tarballs = list(Path(tmp).glob("katex-*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            raise PluginError(f"npm pack katex@{KATEX_VERSION} failed: {proc.stderr.strip()}")
        data = tarballs[0].read_bytes()
        digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
        if digest != KATEX_SHA512:
            raise PluginError(f"katex-{KATEX_VERSION}.tgz has sha512 {digest}, not the pinned one")
        staging = Path(tmp) / "dist"
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("package/dist/")
                if member.name == name or not member.isfile() or ".." in name:
                    continue
                if not (name in KATEX_FILES or name.startswith("fonts/") or name == "README.md"):
                    continue
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
            for member in tar.getmembers():
                if member.name == "package/LICENSE":
                    (staging / "LICENSE").write_bytes(tar.extractfile(member).read())
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, dest)
    if not _katex_ready(dest):
        raise PluginError(f"katex-{KATEX_VERSION}.tgz did not contain {KATEX_FILES}")


# ------------------------------------------------------------------------- includes, links
def _rewrite_links(text: str, base: Path, page_dir: Path, config) -> str:
    """Make the relative links of ``text`` (written from ``base``) right for ``page_dir``."""
    docs_dir = Path(config["docs_dir"]).resolve()
    repo = docs_dir.parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def fix(m: re.Match) -> str:
        target = m.group("target")
        if SCHEME.match(target) or target.startswith(("#", "/")):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = (base / path).resolve()
        if not path or not resolved.exists():
            return m.group(0)  # broken: left for mkdocs --strict (and check_site.py) to report
        suffix = f"#{anchor}" if anchor else ""
        if resolved.is_relative_to(docs_dir):
            rel = os.path.relpath(resolved, page_dir)
            return f"{m.group('bang')}[{m.group('text')}]({Path(rel).as_posix()}{suffix})"
        if resolved.is_relative_to(repo) and not m.group("bang"):
            rel = resolved.relative_to(repo).as_posix()
            if repo_url:
                kind = "tree" if resolved.is_dir() else "blob"
                return f"[{m.group('text')}]({repo_url}/{kind}/main/{rel}{suffix})"
            return m.group("text")
        return m.group(0)

    return LINK.sub(fix, text)


def _includes(markdown: str, page_file: Path, config) -> str:
    def include(m: re.Match) -> str:
        path = (page_file.parent / m.group("path")).resolve()
        if not path.is_file():
            raise PluginError(f"{page_file.name}: included file {m.group('path')} not found")
        return _rewrite_links(path.read_text(), path.parent, page_file.parent, config)

    return INCLUDE.sub(include, markdown)


LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]+\S")
FENCE = re.compile(r"^[ \t]*(```|~~~)")


def _gfm_lists(markdown: str) -> str:
    """A blank line before a list that follows a paragraph line, as GitHub renders it.

    GitHub starts a list right after a line of text ("Why it exists:\\n- ..."); Python-Markdown
    needs a blank line first, or the items run into the paragraph.
    """
    out: list[str] = []
    in_fence = in_list = False
    prev_blank = True
    for line in markdown.split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            if LIST_ITEM.match(line):
                if not in_list and not prev_blank:
                    out.append("")
                in_list = True
            elif line.strip() and prev_blank and not line[:1].isspace():
                in_list = False
        out.append(line)
        prev_blank = not line.strip()
    return "\n".join(out)


# --------------------------------------------------------------------------------- examples
@contextlib.contextmanager
def _chdir(path):  # contextlib.chdir is Python >= 3.11
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _run_examples(markdown: str, page_file: Path) -> str:
    """Run the page's python blocks in order; put each block's printed output under it."""
    import matplotlib

    matplotlib.use("Agg")
    name = page_file.name
    namespace: dict = {"__name__": f"docs_{page_file.stem.replace('-', '_')}"}
    pieces: list[str] = []
    last = 0
    start_time = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, _chdir(tmp):
        for block in python_blocks(markdown):
            if not block.runs:
                continue
            line, code = block.line, block.code
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(code, f"docs/{name}:{line}", "exec"), namespace)
            except Exception as err:
                tb = "".join(traceback.format_exception(err)[-3:])
                raise PluginError(
                    f"docs/{name}: the python block at line {line} failed when the site was "
                    f"built: {err!r}\n{tb}"
                ) from err
            printed = out.getvalue().rstrip()
            if printed:
                indent = block.indent
                shown = textwrap.indent(printed, indent, lambda _: True)
                pieces.append(markdown[last : block.end])
                pieces.append(
                    f'\n\n{indent}```text title="Output (run when this site was built)"\n'
                    f"{shown}\n{indent}```"
                )
                last = block.end
    pieces.append(markdown[last:])
    _state.setdefault("timings", []).append((name, time.perf_counter() - start_time))
    return "".join(pieces)


# ------------------------------------------------------------------------------------ hooks
def on_config(config):
    ensure_katex(Path(config["docs_dir"]) / "assets" / "katex")
    _state["timings"] = []
    return config


def on_page_markdown(markdown, page, config, files):
    page_file = Path(page.file.abs_src_path)
    docs_dir = Path(config["docs_dir"]).resolve()
    top_level_guide = page_file.parent.resolve() == docs_dir
    if top_level_guide and os.environ.get("DOCS_RUN_EXAMPLES", "1") != "0":
        # the page's own blocks, before includes: the README's are tests/test_readme.py's
        markdown = _run_examples(markdown, page_file)
    markdown = _includes(markdown, page_file, config)
    markdown = _rewrite_links(markdown, page_file.parent, page_file.parent, config)
    return _gfm_lists(markdown)


def on_post_build(config):
    timings = _state.get("timings", [])
    if timings:
        total = sum(t for _, t in timings)
        slow = ", ".join(f"{n} {t:.1f}s" for n, t in sorted(timings, key=lambda x: -x[1])[:3])
        print(
            f"docs hooks: ran the examples of {len(timings)} pages in {total:.1f}s ({slow})",
            file=sys.stderr,
        )
