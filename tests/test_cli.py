"""The ``expectax compare`` command line, run in-process (``main([...])`` and capsys).

What the terminal shows is what the program wrote (no rich markup eats square brackets, no
table cut when piped), the JSON is strict, and every plain mistake is one line on stderr with a
non-zero exit status, never a traceback.
"""

import json
import math
import re
import textwrap

import pytest

from expectax.cli import main

PROBLEM_HEADER = "import jax.numpy as jnp\nimport numpyro.distributions as dist\n"


def _problem_file(tmp_path, body, name="my_problem.py"):
    path = tmp_path / name
    path.write_text(PROBLEM_HEADER + textwrap.dedent(body))
    return path


def _strict_json(text):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_default_json_recommends_pathwise(capsys):
    assert main(["compare", "--json"]) == 0
    payload = _strict_json(capsys.readouterr().out)
    assert payload["problem"] == "gaussian-quadratic"
    names = [e["name"] for e in payload["estimators"]]
    assert names == [
        "ScoreFunction",
        "ScoreFunction(baseline=LeaveOneOut())",
        "Pathwise",
        "MeasureValued",
    ]
    measure_valued = payload["estimators"][3]
    assert measure_valued["f_evaluations_per_estimate"] == 16 * (1 + 2 * 2)  # 2 per parameter
    # the recommendation is on variance × evaluations (no timing noise): pathwise, with 5×
    # fewer evaluations of f than measure-valued at a similar variance
    assert payload["recommended"] == "Pathwise"
    assert payload["tied_on_evaluation_normalised_variance"] == ["Pathwise"]
    assert payload["reason"].startswith("lowest variance × evaluations among unbiased")
    assert payload["exact_grad"] is not None


def test_without_a_command_runs_compare(capsys):
    assert main(["--repeats", "20", "--json", "--estimator", "pathwise"]) == 0
    assert _strict_json(capsys.readouterr().out)["problem"] == "gaussian-quadratic"


def test_json_of_a_zero_variance_snr_is_valid(tmp_path, capsys):
    path = _problem_file(
        tmp_path,
        """
        problem = {
            "f": lambda p, x: x ** 2,                       # ignores k: ∂E/∂k = 0 exactly
            "dist_fn": lambda p: dist.Normal(p["mu"], 1.0),
            "params": {"mu": jnp.array(1.0), "k": jnp.array(0.0)},
        }
        """,
    )
    argv = ["compare", "--problem", f"{path}:problem", "--json", "--repeats", "20"]
    assert main([*argv, "--estimator", "pathwise"]) == 0
    payload = _strict_json(capsys.readouterr().out)
    snr = payload["estimators"][0]["snr"]
    assert snr[payload["coordinates"].index("k")] == "inf"


def test_list_problems_keeps_square_brackets(capsys):
    assert main(["compare", "--list-problems"]) == 0
    out = capsys.readouterr().out
    assert "gaussian-cos: E[cos(1 x)], x ~ N(mu, sigma^2)" in out
    assert "gaussian-quadratic: E[(x - 3)^2]" in out


def test_table_text_in_square_brackets_and_wide_tables_are_not_cut(tmp_path, capsys):
    long = "a_parameter_with_a_name_long_enough_to_make_the_table_wider_than_any_terminal_" * 2
    path = _problem_file(
        tmp_path,
        f"""
        problem = {{
            "name": "mine[v2]",
            "description": "E[exp(-x^2)] with [bold]brackets[/bold] kept",
            "f": lambda p, x: jnp.exp(-x ** 2),
            "dist_fn": lambda p: dist.Normal(p["{long}"], 1.0),
            "params": {{"{long}": jnp.array(0.5)}},
        }}
        """,
    )
    png = tmp_path / "est.png"
    argv = ["compare", "--problem", f"{path}:problem", "--repeats", "30", "--num-samples", "4"]
    code = main([*argv, "--plot", str(png), "--seed", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "mine[v2]: E[exp(-x^2)] with [bold]brackets[/bold] kept" in out
    assert "per coordinate: mean ± s.e. [variance]" in out
    assert long in out and "…" not in out  # the coordinate column is not cut
    assert "Recommendation:" in out and "no exact" in out
    assert png.stat().st_size > 1000


def test_no_estimator_could_run_exits_non_zero(capsys):
    code = main(["compare", "--problem", "bernoulli", "--estimator", "pathwise", "--repeats", "5"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Pathwise is not applicable" in captured.out
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("expectax compare: no estimator could run on this problem")


GOOD_PROBLEM = """
problem = {
    "f": lambda p, x: (x - 2.0) ** 2,
    "dist_fn": lambda p: dist.Normal(p["mu"], 1.0),
    "params": {"mu": jnp.array(1.0)},
    EXTRA
}
"""

# (id, problem file text or None, extra argv, message on stderr)
CLI_CATALOGUE = [
    ("unknown problem", None, ["--problem", "gaussian-quadratc"], "gaussian-quadratic"),
    ("missing file", None, ["--problem", "nowhere.py:p"], "no such file 'nowhere.py'"),
    ("file without :name", None, ["--problem", "nowhere.py"], "say which object of nowhere.py"),
    ("syntax error", "problem = {\n  'f': lambda p, x: x +,\n}\n", [], "syntax error at line 4"),
    ("file raises", "problem = undefined_name\n", [], "failed with NameError: name 'undefined"),
    ("missing object", "other = 1\n", [], "defines no 'problem'; it defines"),
    ("missing keys", "problem = {'f': 1}\n", [], r"lacks keys \['dist_fn', 'params'\]"),
    ("unknown estimator", None, ["--estimator", "nope"], "--estimator: invalid choice 'nope'"),
    ("repeats 1", None, ["--repeats", "1"], "--repeats must be at least 2"),
    ("num samples 0", None, ["--num-samples", "0"], "--num-samples must be at least 1, got 0"),
    ("huge seed", None, ["--seed", str(10**30)], "--seed: seed must be a 64-bit integer"),
    (
        "f raises TypeError",
        GOOD_PROBLEM.replace("(x - 2.0) ** 2", "x + 'a'").replace("EXTRA", ""),
        [],
        r"TypeError: f\(params, x\) failed on a sample x of dist_fn\(params\)",
    ),
    (
        "dist_fn fails",
        GOOD_PROBLEM.replace('p["mu"]', 'p["nope"]').replace("EXTRA", ""),
        [],
        r"TypeError: dist_fn\(params\) failed with KeyError",
    ),
    (
        "exact_grad structure",
        GOOD_PROBLEM.replace("EXTRA", "'exact_grad': {'mu': 1.0, 'sigma': 2.0},"),
        [],
        "ValueError: exact_grad must have the structure of params",
    ),
]


@pytest.mark.parametrize(
    ("problem_text", "extra", "message"),
    [c[1:] for c in CLI_CATALOGUE],
    ids=[c[0] for c in CLI_CATALOGUE],
)
def test_mistakes_are_one_line_and_exit_2(tmp_path, capsys, problem_text, extra, message):
    argv = ["compare", "--repeats", "5", "--num-samples", "2"]
    if problem_text is not None:
        path = tmp_path / "prob.py"
        path.write_text(PROBLEM_HEADER + problem_text)
        argv += ["--problem", f"{path}:problem"]
    code = main([*argv, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("expectax compare: error: ")
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_figure_out_that_is_a_file_is_refused(tmp_path, capsys):
    existing = tmp_path / "taken"
    existing.write_text("mine")
    code = main(["compare", "--figure", "paper", "--out", str(existing)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--out:" in err and "exists and is not a folder" in err
    assert existing.read_text() == "mine"


def test_seed_bounds_are_accepted(capsys):
    for seed in (2**63 - 1, -(2**63)):
        argv = ["compare", "--repeats", "5", "--json", "--estimator", "pathwise"]
        assert main([*argv, "--seed", str(seed)]) == 0
        assert math.isfinite(_strict_json(capsys.readouterr().out)["estimators"][0]["mean"][0])
