"""Every guide's Python examples run as pasted: the ```python blocks of each docs/*.md, in order.

Like ``tests/test_readme.py`` for the README: the blocks of one file run in order in one
namespace (a fresh one per file), so a later block may use what an earlier one defined, and a
block that needs a name nobody defined fails here as it would for a reader.

Convention for blocks that must not run (a "before" example that needs a removed package, a
training run that takes minutes): put the HTML comment ``<!-- no-run -->`` on the line right
before the opening fence (blank lines between are allowed). The block is still shown to
readers; the test skips it, and the test checks that every marker is followed by a block. A
block indented inside a list item is dedented before it runs. Keep
each file's runnable blocks to a few seconds: mark a slow block no-run rather than slowing CI,
and point to the command or benchmark that runs it in full.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "tools"))
from doc_blocks import NO_RUN, python_blocks  # noqa: E402 - the site build's parser too


def blocks(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, code, runs)`` for each ```python block of a markdown file."""
    return [(b.line, b.code, b.runs) for b in python_blocks(path.read_text())]


GUIDES = sorted(DOCS.glob("*.md"))


def test_there_are_guides_with_examples():
    assert sum(len(blocks(p)) for p in GUIDES) >= 8


@pytest.mark.parametrize("path", GUIDES, ids=[p.name for p in GUIDES])
def test_no_run_markers_precede_a_block(path):
    text = path.read_text()
    for match in re.finditer(re.escape(NO_RUN), text):
        after = text[match.end() :].lstrip()
        assert after.startswith("```python"), (
            f"{path.name}: a {NO_RUN} marker at offset {match.start()} is not followed by a "
            "```python block"
        )


@pytest.mark.parametrize("path", GUIDES, ids=[p.name for p in GUIDES])
def test_guide_examples_run(path, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for line, code, runs in blocks(path):
        if not runs:
            continue
        try:
            exec(compile(code, f"docs/{path.name}:{line}", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(
                f"docs/{path.name}, python block at line {line} failed: {err!r}\n{code}"
            ) from err
