"""The ```python blocks of a Markdown guide, and which of them run.

One parser for the two places that run the guides' examples: ``tests/test_docs_examples.py``
(in CI) and the site build (``docs/tools/hooks.py``), so both follow the same rules. A block
right after the HTML comment :data:`NO_RUN` (blank lines between allowed) is shown but not
run; a block indented inside a list item is dedented. Standard library only.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap

NO_RUN = "<!-- no-run -->"
PYTHON_BLOCK = re.compile(r"```python\n(.*?)^([ \t]*)```", flags=re.S | re.M)


@dataclasses.dataclass(frozen=True)
class Block:
    """One block: its span in the text, first line (1-based), dedented code, the indent of
    its closing fence, and whether it runs."""

    start: int
    end: int
    line: int
    code: str
    indent: str
    runs: bool


def python_blocks(markdown: str) -> list[Block]:
    """Every ```python block of ``markdown``, in order."""
    out = []
    for match in PYTHON_BLOCK.finditer(markdown):
        start = match.start()
        preceding = markdown[:start].rstrip().rsplit("\n", 1)[-1].strip()
        out.append(
            Block(
                start=start,
                end=match.end(),
                line=markdown.count("\n", 0, start) + 1,
                code=textwrap.dedent(match.group(1)),
                indent=match.group(2),
                runs=preceding != NO_RUN,
            )
        )
    return out
