"""``expectax rl-seq``: the equinox transformer policy, its training and its command line.

Small and fast: a tiny configuration (digits 0–1, at most 2 tokens), one training compilation
for the whole module (a module-scoped CLI run with --json).
"""

from __future__ import annotations

import json
import re
import sys

import pytest

pytest.importorskip("equinox")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from expectax import cli  # noqa: E402
from expectax.rl import seq_demo as sd  # noqa: E402

TINY = dict(digits=3, max_len=3, min_target=0, max_target=4, d_model=8, heads=1, layers=1)
EASY = [
    "--digits", "2", "--max-len", "2", "--min-target", "0", "--max-target", "2",
    "--d-model", "8", "--heads", "1", "--layers", "1", "--groups", "3", "--group-size", "4",
    "--steps", "40", "--eval-every", "40", "--lr", "0.03", "--seed", "0", "1", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    """A tiny config, its uniform initial policy, a perturbed one, and a jitted evaluation."""
    c = sd.SeqConfig(**TINY)
    uniform = sd.TransformerPolicy(c, jax.random.key(3))
    w = jax.random.normal(jax.random.key(4), uniform.head.weight.shape)
    perturbed = eqx.tree_at(lambda m: m.head.weight, uniform, w)  # non-uniform output layer
    return c, uniform, perturbed, eqx.filter_jit(sd.exact_evaluation)


def test_log_probs_sum_to_one_over_every_completion(tiny):
    c, uniform, model, evaluate = tiny
    toks, masks = sd.enumerate_completions(c)
    assert toks.shape == (1 + 3 + 9 + 27, 3)  # Σ_{n<L} Dⁿ ending in EOS, plus Dᴸ without
    with jax.numpy_rank_promotion("raise"):
        ev = evaluate(model, uniform, c)
    np.testing.assert_allclose(np.asarray(ev["mass_per_target"]), 1.0, atol=1e-5)
    assert float(ev["kl"]) > 0.01
    # a sampled completion is one of the enumerated ones, with the same mask
    y, m = sd.sample_completion(model, c, jnp.asarray(2), jax.random.key(0))
    rows = [i for i in range(len(toks)) if np.array_equal(toks[i], np.asarray(y))]
    assert len(rows) == 1 and np.array_equal(masks[rows[0]], np.asarray(m))


def test_initial_policy_is_uniform_and_the_reference(tiny):
    c, uniform, _, evaluate = tiny
    ev = evaluate(uniform, uniform, c)
    assert float(ev["kl"]) == 0.0
    # uniform over D+1 = 4 tokens: P(sum = 0) = P(EOS) + P(0 EOS) + P(0 0 EOS) + P(0 0 0)
    p0 = 1 / 4 + 1 / 16 + 1 / 64 + 1 / 64
    np.testing.assert_allclose(float(ev["success_per_target"][0]), p0, rtol=1e-5)


def test_rewards_exact_and_partial():
    c = sd.SeqConfig(**TINY)
    sums, targets = jnp.array([0, 3, 4]), jnp.array([0, 4, 1])
    np.testing.assert_array_equal(sd.rewards_for(c, sums, targets), [1.0, 0.0, 0.0])
    p = sd.SeqConfig(**TINY, reward="partial")
    np.testing.assert_allclose(sd.rewards_for(p, sums, targets), [1.0, 0.5, 0.0])


@pytest.fixture(scope="module")
def easy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rlseq")
    capture = pytest.MonkeyPatch()
    import io

    buf = io.StringIO()
    capture.setattr(sys, "stdout", buf)
    try:
        rc = cli.main(["rl-seq", "--variant", "rloo", "--out", str(out), "--json", *EASY])
    finally:
        capture.undo()
    return rc, json.loads(buf.getvalue()), out


def test_cli_json_run_trains_and_writes_files(easy_run):
    rc, summary, out = easy_run
    assert rc == 0
    for name in ("rl_seq_curves.csv", "rl_seq_evals.csv", "rl_seq_summary.json"):
        assert (out / name).is_file()
    assert (out / "rl_seq_curves.png").stat().st_size > 0
    (group,) = summary["groups"]
    assert group["variant"] == "rloo" and group["seeds"] == [0, 1]
    assert group["tokens_per_s"] > 0
    # the uniform initial policy succeeds with probability ≤ 0.42 on every target; 40 steps
    # of RLOO raise it well above that on both seeds (deterministic keys)
    runs = summary["runs"]
    assert all(r["success"] > 0.6 for r in runs), [r["success"] for r in runs]
    evals = (out / "rl_seq_evals.csv").read_text().splitlines()
    assert evals[0].startswith("variant,seed,step,success")
    assert len(evals) == 1 + 2 * 2  # two seeds × (step 0, step 40)


def test_cli_refuses_an_existing_run(easy_run, capsys):
    _, _, out = easy_run
    assert cli.main(["rl-seq", "--out", str(out), *EASY]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds an earlier run" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variant", "ppo"], r"--variant: unknown 'ppo'"),
        (["--kl", "k4-loss"], r"argument --kl: invalid choice"),
        (["--beta", "-1"], r"argument --beta: must be ≥ 0"),
        (["--max-target", "40"], r"--min-target/--max-target must satisfy"),
        (["--d-model", "10", "--heads", "3"], r"--d-model \(10\) must be a multiple of heads"),
        (["--variant", "rloo", "--group-size", "1"], r"--group-size must be at least 2 for rloo"),
        (["--seed", "1", "1"], r"--seed lists a seed twice"),
        (["--steps", "0"], r"argument --steps: must be positive"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    try:
        rc = cli.main(["rl-seq", "--out", str(tmp_path / "o"), *argv])
    except SystemExit as exit_:  # argparse's own errors (bad type or choice)
        rc = exit_.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_missing_equinox_is_one_line(monkeypatch, capsys, tmp_path):
    import expectax.rl

    monkeypatch.chdir(tmp_path)  # nothing lands in the repository should the import succeed
    monkeypatch.setitem(sys.modules, "equinox", None)  # import equinox raises ImportError
    for name in ("seq_demo", "seq_cli"):
        monkeypatch.delitem(sys.modules, f"expectax.rl.{name}", raising=False)
        monkeypatch.delattr(expectax.rl, name, raising=False)
    assert cli.main(["rl-seq"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        'expectax rl-seq is unavailable: equinox is not installed; pip install "expectax[seq]" '
        "(or pip install equinox)"
    )


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"max_len must be at most 6"):
        sd.SeqConfig(max_len=7).validate()
    with pytest.raises(ValueError, match=r"variant: unknown 'x'"):
        sd.SeqConfig(variant="x").validate()
