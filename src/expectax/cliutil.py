"""The one habit of every ``expectax`` command on a usage error [extra: apps].

:class:`ArgumentParser` is argparse's parser with one change of behaviour, used by ``compare``
and by every application's subcommand alike: a mistake on the command line is **one line** on
stderr, exit status 2, naming the argument and saying what to do, with a "did you mean ..." for
a misspelt flag or choice; never a usage block first. A flag that is not one of the command's
is blamed before anything else (``expectax rl --episdoes 5`` blames ``--episdoes``, not the
``5`` after it). :func:`fail` prints the same kind of line for mistakes found after parsing
(an ``--out`` that is a file, a seed given twice) and returns 2.

Imports only the standard library.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

__all__ = ["ArgumentParser", "UsageError", "did_you_mean", "fail", "one_line", "run_command"]


def one_line(text: Any) -> str:
    """``text`` with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def did_you_mean(word: str, choices: Iterable[str], *, quote: bool = True) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``word``, or ``""``."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not match:
        return ""
    return f"; did you mean {match[0]!r}?" if quote else f"; did you mean {match[0]}?"


def fail(prog: str, message: Any) -> int:
    """Print ``"<prog>: error: <message>"`` as one line on stderr; return exit status 2."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return 2


_INVALID_CHOICE = re.compile(r"argument (?P<arg>\S+): invalid choice: '(?P<value>[^']*)'")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, exit 2, with a suggestion.

    Also: every flag of a command is checked before the values are (so a misspelt flag is the
    one blamed), and ``allow_abbrev`` is off (``--s`` never silently means ``--steps``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit status 2 (argparse prints the usage block first)."""
        match = _INVALID_CHOICE.search(message)
        if match is not None:
            action = self._action_for(match["arg"])
            if action is not None and action.choices is not None:
                choices = [str(c) for c in action.choices]
                message = (
                    f"argument {match['arg']}: invalid choice {match['value']!r}; choose from "
                    f"{', '.join(choices)}{did_you_mean(match['value'], choices)}"
                )
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        self._check_flags(argv)
        return super().parse_known_args(argv, namespace)

    def _action_for(self, name: str) -> argparse.Action | None:
        for action in self._actions:
            if name in action.option_strings or name in (action.dest, action.metavar):
                return action
            if not action.option_strings and name == str(action.metavar or action.dest):
                return action
        return None

    def _check_flags(self, argv: Sequence[str]) -> None:
        """Blame the first flag that is not one of this command's, with a suggestion."""
        if any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            return  # the parser of commands: each command's parser checks its own flags
        known = [s for a in self._actions for s in a.option_strings]
        for arg in argv:
            if arg == "--":
                return
            if not arg.startswith("-") or arg == "-" or _is_number(arg):
                continue
            flag = arg.split("=", 1)[0] if arg.startswith("--") else arg
            if flag in known:
                continue
            if not flag.startswith("--") and len(flag) > 2 and flag[:2] in known:
                continue  # -n5: a short flag with its value attached
            hint = did_you_mean(flag, [s for s in known if s.startswith("--")], quote=False)
            self.error(f"unrecognized argument {flag}{hint or '; no such flag'}")


class UsageError(SystemExit):
    """A mistake found after parsing (an ``--out`` that is a file, a seed given twice, ...).

    A ``SystemExit`` with status 2 whose text is the one line :func:`run_command` prints
    (``"<prog>: error: <message>"``).
    """

    def __init__(self, prog: str, message: Any) -> None:
        super().__init__(2)
        self.prog, self.message = prog, one_line(message)

    def __str__(self) -> str:
        return f"{self.prog}: error: {self.message}"


def run_command(prog: str, run: Any, args: argparse.Namespace) -> int:
    """``run(args)`` with the shared endings: a :class:`UsageError` is one line and status 2;
    Ctrl-C (``KeyboardInterrupt``) is one line saying what the run kept, status 130; an output
    folder the run created and left empty is removed (see :func:`expectax.runio.recording`)."""
    from expectax import runio

    with runio.recording() as record:
        try:
            return int(run(args) or 0)
        except UsageError as err:
            print(str(err), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            record.remove_empty()
            print(f"{prog}: interrupted; {record.describe()}", file=sys.stderr)
            return 130
        finally:
            record.remove_empty()
