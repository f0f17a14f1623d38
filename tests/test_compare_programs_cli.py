"""``expectax compare --problem file.py:name`` on stochastic programs (issue 18 item 9).

Estimator names as strings in a problem file are the ``--estimator`` names, mapped to
estimators (a did-you-mean for an unknown one); every mistake in a program problem is one line
on stderr, exit status 2, before anything is measured.
"""

import json
import textwrap

import pytest

from expectax.cli import main

HEADER = """\
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import expectax as ex


def program(theta):
    with numpyro.plate("units", 3):
        b = numpyro.sample("b", dist.Bernoulli(logits=theta))
    z = numpyro.sample("z", dist.Normal(theta[0], 1.0))
    return (jnp.sum(b * jnp.array([1.0, 2.0, 3.0])) - 2.5) ** 2 + z ** 2


def raising(theta):
    numpyro.sample("b", dist.Bernoulli(logits=theta))
    raise KeyError("no such column")

"""


def _run(tmp_path, capsys, body, *flags):
    path = tmp_path / "prog.py"
    path.write_text(HEADER + textwrap.dedent(body))
    argv = ["compare", "--problem", f"{path}:problem", "--repeats", "4", "--num-samples", "2"]
    code = main([*argv, *flags])
    return code, capsys.readouterr()


def test_estimator_names_as_strings_are_mapped(tmp_path, capsys):
    body = """
    problem = {"program": program, "params": jnp.zeros(3),
               "configurations": {"defaults": None, "disarm": {"b": "disarm"},
                                  "rloo": {"b": "RLOO"}}}
    """
    code, out = _run(tmp_path, capsys, body, "--json")
    assert code == 0, out.err
    payload = json.loads(out.out)
    assert [e["name"] for e in payload["estimators"]] == ["defaults", "disarm", "rloo"]
    assert all(e["error"] is None for e in payload["estimators"])


MISTAKES = [
    # (what, the problem's body, the one line on stderr)
    (
        "unknown name",
        '{"program": program, "params": jnp.zeros(3), "configurations": {"x": {"b": "disram"}}}',
        r"configurations\['x'\]\['b'\] names an unknown estimator 'disram'; did you mean "
        r"'disarm'\?",
    ),
    (
        "unknown site",
        '{"program": program, "params": jnp.zeros(3), "configurations": {"x": {"c": "disarm"}}}',
        r"ValueError: configurations\['x'\]: .*sites \['c'\] that the program does not draw",
    ),
    (
        "estimator class",
        '{"program": program, "params": jnp.zeros(3), "configurations": {"x": {"b": ex.DisARM}}}',
        r"TypeError: configurations\['x'\]: site 'b' has the class DisARM.*parentheses",
    ),
    (
        "DisARM on a Normal",
        '{"program": program, "params": jnp.zeros(3), "configurations": {"x": {"z": "disarm"}}}',
        r"ValueError: configurations\['x'\]: site 'z' \(Normal\): DisARM serves Bernoulli",
    ),
    (
        "program raises",
        '{"program": raising, "params": jnp.zeros(3)}',
        r"TypeError: program raising\(params\) raised KeyError: 'no such column'",
    ),
]


@pytest.mark.parametrize(
    ("body", "message"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_mistakes_are_one_line_exit_2(tmp_path, capsys, body, message):
    import re

    code, out = _run(tmp_path, capsys, f"problem = {body}\n")
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("expectax compare: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert out.out == ""


def test_a_dict_problem_may_name_its_estimators(tmp_path, capsys):
    body = """
    problem = {"f": lambda p, x: (x - 2.0) ** 2,
               "dist_fn": lambda p: dist.Normal(p, 1.0),
               "params": jnp.array(0.0),
               "estimators": ["pathwise", "score"]}
    """
    code, out = _run(tmp_path, capsys, body, "--json")
    assert code == 0, out.err
    names = [e["name"] for e in json.loads(out.out)["estimators"]]
    assert names == ["Pathwise", "ScoreFunction"]
