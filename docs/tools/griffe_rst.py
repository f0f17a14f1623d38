"""A griffe extension: the reST bits of expectax's Google-style docstrings, as Markdown.

The docstrings follow optax's habit (``.. math::`` blocks, ``:math:``, ``:class:``, ``:func:``
roles) so that ``help()`` reads well; mkdocstrings renders Markdown. Before griffe parses a
docstring, this rewrites, and touches nothing else:

- ``.. math::`` followed by an indented block → a ``$$ … $$`` block (pymdownx.arithmatex,
  rendered by KaTeX); ``:math:`x``` → ``\\(x\\)``;
- ``:class:`` / ``:func:`` / ``:meth:`` / ``:mod:`` / ``:data:`` / ``:attr:`` roles → an
  *optional* cross-reference (a link when the target is documented on the site, plain code
  otherwise, never a warning); ``~a.b.C`` shows as ``C``;
- ``.. code-block:: LANG`` → a fenced block;
- a literal block (a paragraph ending in ``::`` and an indented block after it) → the
  paragraph ending in ``:`` (``text ::`` → ``text``) and a fenced block (``pycon`` for ``>>>``
  lines, ``bash`` for a command line such as ``expectax ...``, ``python`` otherwise);
  ``Example::`` becomes an ``Examples:`` section holding that block;
- an ``Example:`` section header → ``Examples:`` (griffe parses ``>>>`` lines only there);
- ``a, b: text`` in an ``Args:`` section (several parameters sharing one description) → one
  entry per parameter, each with that text.

It also tells griffe that ``@pytree_dataclass`` (``expectax.estimators.base``) makes a
dataclass and ``static_field(...)`` is a ``dataclasses.field(...)``, so that an estimator's
fields are its ``__init__`` parameters, as they are at run time.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>.*)$")
_CODE_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block::[ \t]*(?P<lang>\S*)[ \t]*$")
_MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
_REF_ROLE = re.compile(
    r":(?:py:)?(?P<kind>class|func|meth|mod|data|attr|obj|exc):`(?P<target>[^`]+)`"
)
_EXAMPLE_HEADER = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.M)


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _directive_blocks(text: str) -> str:
    """Replace ``.. math::`` and ``.. code-block::`` directives by Markdown blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH_DIRECTIVE.match(line)
        code = None if math else _CODE_DIRECTIVE.match(line)
        if not (math or code):
            out.append(line)
            i += 1
            continue
        m = math or code
        indent = m.group("indent")
        body: list[str] = []
        if math and m.group("inline").strip():
            body.append(m.group("inline").strip())
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or _indent_of(lines[j]) > len(indent)):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        body = [b for b in body if not (math and b.strip().startswith(":"))]  # :label: etc.
        depth = min((_indent_of(b) for b in body if b.strip()), default=0)
        body = [indent + b[depth:] if b.strip() else "" for b in body]
        if out and out[-1].strip():
            out.append("")
        if math:
            out += [indent + "$$", *body, indent + "$$"]
        else:
            out += [indent + "```" + m.group("lang"), *body, indent + "```"]
        if j < len(lines) and lines[j].strip():
            out.append("")
        i = j
    return "\n".join(out)


_LITERAL = re.compile(r"^(?P<indent>[ \t]*)(?P<text>.*?)(?P<space>[ \t]*)::[ \t]*$")
_DIRECTIVE = re.compile(r"^[ \t]*\.\. [\w:-]+::")
_SHELL = re.compile(r"^(\$ |expectax |python |pip |uv |bash )")


def _literal_blocks(text: str) -> str:
    """reST literal blocks (``paragraph::`` + an indented block) → fenced Markdown blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = None if _DIRECTIVE.match(line) else _LITERAL.match(line)
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if not m or j == i + 1 or j == len(lines) or _indent_of(lines[j]) <= len(m["indent"]):
            out.append(line)
            i += 1
            continue
        indent = m["indent"]
        body: list[str] = []
        while j < len(lines) and (not lines[j].strip() or _indent_of(lines[j]) > len(indent)):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        depth = min(_indent_of(b) for b in body if b.strip())
        first = body[0].strip()
        lang = "pycon" if first.startswith(">>>") else "bash" if _SHELL.match(first) else "python"
        text_ = m["text"]
        inner = indent
        if text_ in ("Example", "Examples"):  # a Google-style section holding the block
            out.append(indent + "Examples:")
            inner = indent + "    "
        elif text_:
            out.append(indent + text_ + ("" if m["space"] else ":"))
        if inner == indent and out and out[-1].strip():
            out.append("")
        out.append(inner + "```" + lang)
        out += [inner + b[depth:] if b.strip() else "" for b in body]
        out.append(inner + "```")
        if j < len(lines) and lines[j].strip():
            out.append("")
        i = j
    return "\n".join(out)


_SECTION = re.compile(r"^(?P<indent>[ \t]*)(?P<name>[A-Z][A-Za-z ]*):[ \t]*$")
_ITEM_NAMES = re.compile(
    r"^(?P<names>\*{0,2}\w+(?:,[ \t]*\*{0,2}\w+)+)(?P<rest>[ \t]*(\(.*?\))?:.*)$"
)


def _split_grouped_params(text: str) -> str:
    """``a, b: text`` items of ``Args:`` sections → ``a: text`` and ``b: text``."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        header = _SECTION.match(lines[i])
        out.append(lines[i])
        i += 1
        if not header or header.group("name").lower() not in ("args", "arguments", "parameters"):
            continue
        base = len(header.group("indent"))
        items: list[list[str]] = []
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > base):
            line = lines[i]
            if line.strip() and (not items or _indent_of(line) <= _indent_of(items[0][0])):
                items.append([line])
            elif items:
                items[-1].append(line)
            else:
                items.append([line])
            i += 1
        for item in items:
            first, rest = item[0], item[1:]
            pad = first[: _indent_of(first)]
            # a list of names continued on the next line: "a, b,\n    c: text"
            while rest and first.rstrip().endswith(",") and ":" not in first:
                first = first.rstrip() + " " + rest.pop(0).strip()
            m = _ITEM_NAMES.match(first.strip())
            if not m:
                out += item
                continue
            for name in re.split(r",[ \t]*", m.group("names")):
                out.append(pad + name + m.group("rest"))
                out += rest
    return "\n".join(out)


class ReSTToMarkdown(griffe.Extension):
    """Rewrite the reST constructs of every docstring in the loaded package (see module doc)."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        for decorator in cls.decorators:
            value = decorator.value
            if isinstance(value, griffe.Expr) and str(value).endswith("pytree_dataclass"):
                decorator.value = griffe.ExprName("dataclass", parent="dataclasses")
                for member in cls.members.values():
                    v = getattr(member, "value", None)
                    if isinstance(v, griffe.ExprCall) and str(v.function).endswith("static_field"):
                        v.function = griffe.ExprName("field", parent="dataclasses")

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._collection = loader.modules_collection
        self._visit(pkg, seen=set())

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = self.convert(obj.docstring.value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)

    def _exists(self, path: str) -> bool:
        try:
            self._collection[path]
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return False
        return True

    def _identifier(self, target: str, obj: griffe.Object) -> str | None:
        target = target.lstrip("~").removesuffix("()")
        scopes = []
        here: griffe.Object | None = obj
        while here is not None:  # the object itself, its class, its module, its package
            scopes.append(here.path)
            here = here.parent
        candidates = [target] if target.startswith("expectax") else []
        candidates += [f"{scope}.{target.lstrip('.')}" for scope in scopes]
        candidates.append(f"expectax.{target}")
        for candidate in candidates:
            if self._exists(candidate):
                return candidate
        return None

    def convert(self, text: str, obj: griffe.Object) -> str:
        text = _directive_blocks(text)
        text = _literal_blocks(text)
        text = _split_grouped_params(text)
        text = _MATH_ROLE.sub(lambda m: r"\(" + m.group("tex") + r"\)", text)
        text = _EXAMPLE_HEADER.sub(lambda m: m.group("indent") + "Examples:", text)

        def ref(m: re.Match) -> str:
            target = m.group("target")
            title = target.lstrip("~")
            if target.startswith("~"):
                title = title.rsplit(".", 1)[-1]
            code = f"<code>{html.escape(title)}</code>"
            ident = self._identifier(target, obj)
            if ident is None:
                return code
            return f'<autoref identifier="{html.escape(ident)}" optional>{code}</autoref>'

        return _REF_ROLE.sub(ref, text)
