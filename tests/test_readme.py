"""The README's Python examples run as written, in order, in one namespace."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 5


def test_readme_examples_run():
    namespace: dict = {}
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the point
            raise AssertionError(f"README python block {i} failed: {err!r}\n{block}") from err


def test_readme_test_command_is_what_ci_runs():
    text = README.read_text()
    marker = text.index("<!-- test-command -->")
    command = text[marker:].split("\n")[2]
    assert "pytest" in command and 'pip install ".[test]"' in command
    ci = (README.parent / ".ci" / "run").read_text()
    assert "test-command" in ci
