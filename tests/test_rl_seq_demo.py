"""``expectax rl-seq``: the equinox transformer policy, its training and its command line.

Small and fast (≈ 12 s): a tiny configuration (digits 0–1, at most 2 tokens, width 8, one
block), one training and one evaluation compilation for the whole module (a module-scoped CLI
run with --json, compiled with XLA's backend optimisation off); the other tests reuse its
outputs and its compiled eager initialiser.
"""

from __future__ import annotations

import functools
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
# the tiniest task (digits 0-1, at most 2 tokens, targets 0-2) and model: its one training
# compilation (and one evaluation compilation) serve every test of the module
EASY_CONFIG = dict(digits=2, max_len=2, min_target=0, max_target=2, d_model=8, heads=1, layers=1)
EASY = [
    "--digits",
    "2",
    "--max-len",
    "2",
    "--min-target",
    "0",
    "--max-target",
    "2",
    "--d-model",
    "8",
    "--heads",
    "1",
    "--layers",
    "1",
    "--groups",
    "3",
    "--group-size",
    "4",
    "--steps",
    "30",
    "--eval-every",
    "30",
    "--lr",
    "0.03",
    "--warmup",
    "3",
    "--seed",
    "0",
    "1",
    "--quiet",
]  # fmt: skip (the defaults otherwise: k2 KL loss, entropy bonus, cosine decay)
# uniform over {0, 1, EOS}: P(sum=0) = P(EOS) + P(0 EOS) + P(0 0) = 5/9, P(1) = 3/9, P(2) = 1/9
UNIFORM_SUCCESS = (5 / 9 + 3 / 9 + 1 / 9) / 3


# XLA's backend optimisation off: the same programs, compiled in a third of the time
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def easy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rlseq")
    capture = pytest.MonkeyPatch()
    import io

    buf = io.StringIO()
    capture.setattr(sys, "stdout", buf)
    fast = functools.partial(sd.train, compiler_options=FAST_COMPILE)
    capture.setattr(sd, "train", fast)
    try:
        with jax.numpy_rank_promotion("raise"):
            rc = cli.main(["rl-seq", "--variant", "rloo", "--out", str(out), "--json", *EASY])
    finally:
        capture.undo()
    return rc, json.loads(buf.getvalue()), out


def test_enumeration_counts_every_completion():
    toks, masks = sd.enumerate_completions(sd.SeqConfig(**TINY))
    assert toks.shape == masks.shape == (1 + 3 + 9 + 27, 3)  # Σ_{n<L} Dⁿ with EOS, plus Dᴸ
    assert len({tuple(t) for t in toks.tolist()}) == len(toks)
    np.testing.assert_array_equal(masks.sum(1), [1] + [2] * 3 + [3] * 9 + [3] * 27)


def test_a_sample_is_one_of_the_enumerated_completions(easy_run):
    c = sd.SeqConfig(**EASY_CONFIG)  # the run's shapes and jax config: the eager
    with jax.numpy_rank_promotion("raise"):  # initialiser's ops are already compiled
        model = sd.TransformerPolicy(c, jax.random.key(3))
    w = np.random.default_rng(4).normal(size=model.head.weight.shape).astype(np.float32)
    model = eqx.tree_at(lambda m: m.head.weight, model, jnp.asarray(w))  # non-uniform
    toks, masks = sd.enumerate_completions(c)
    keys = jax.random.split(jax.random.key(0), 4)
    sample = jax.vmap(lambda k: sd.sample_completion(model, c, jnp.asarray(1), k))
    ys, ms = jax.jit(sample).lower(keys).compile(FAST_COMPILE)(keys)
    for y, m in zip(ys, ms, strict=True):
        rows = [i for i in range(len(toks)) if np.array_equal(toks[i], np.asarray(y))]
        assert len(rows) == 1 and np.array_equal(masks[rows[0]], np.asarray(m))


def test_initial_policy_is_uniform_and_the_reference(easy_run):
    _, _, out = easy_run
    rows = (out / "evals.csv").read_text().splitlines()
    head = rows[0].split(",")
    first = [dict(zip(head, r.split(","), strict=True)) for r in rows[1:]]
    first = [r for r in first if r["step"] == "0"]
    assert len(first) == 2
    for r in first:
        assert float(r["kl"]) == 0.0
        np.testing.assert_allclose(float(r["success"]), UNIFORM_SUCCESS, rtol=1e-5)


def test_rewards_exact_and_partial():
    c = sd.SeqConfig(**TINY)
    sums, targets = np.array([0, 3, 4]), np.array([0, 4, 1])
    np.testing.assert_array_equal(sd.rewards_for(c, sums, targets), [1.0, 0.0, 0.0])
    p = sd.SeqConfig(**TINY, reward="partial")
    np.testing.assert_allclose(sd.rewards_for(p, sums, targets), [1.0, 0.5, 0.0])


def test_cli_json_run_trains_and_writes_files(easy_run):
    rc, summary, out = easy_run
    assert rc == 0
    for name in ("log.csv", "evals.csv", "summary.json"):
        assert (out / name).is_file()
    assert (out / "curve.png").stat().st_size > 0
    (group,) = summary["groups"]
    assert group["variant"] == "rloo" and group["seeds"] == [0, 1]
    assert group["tokens_per_s"] > 0
    runs = summary["runs"]
    # the trained (non-uniform) policy is still a distribution over the enumerated completions
    for r in runs:
        np.testing.assert_allclose(r["mass_per_target"], 1.0, atol=1e-5)
        assert r["kl"] > 0.01
    # the uniform initial policy succeeds with probability 1/3 on average (≤ 5/9 on every
    # target); 30 steps of RLOO raise it well above that on both seeds (deterministic keys)
    assert all(r["success"] > 0.6 for r in runs), [r["success"] for r in runs]
    evals = (out / "evals.csv").read_text().splitlines()
    assert evals[0].startswith("variant,seed,step,success")
    assert len(evals) == 1 + 2 * 2  # two seeds × (step 0, step 30)


def test_cli_refuses_an_existing_run(easy_run, capsys):
    _, _, out = easy_run
    assert cli.main(["rl-seq", "--out", str(out), *EASY]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds an earlier run" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variant", "ppo"], r"--variant: invalid choice 'ppo'; choose from"),
        (["--variant", "rlooo"], r"did you mean 'rloo'\?"),
        (["--kl", "k4-loss"], r"argument --kl: invalid choice"),
        (["--beta", "-1"], r"argument --beta: must be ≥ 0"),
        (["--max-target", "40"], r"--min-target/--max-target must satisfy"),
        (["--d-model", "10", "--heads", "3"], r"--d-model \(10\) must be a multiple of heads"),
        (["--variant", "rloo", "--group-size", "1"], r"--group-size must be at least 2 for rloo"),
        (["--seed", "1", "1"], r"--seed lists a seed twice"),
        (["--steps", "0"], r"argument --steps: must be positive"),
        (["--steps", "50", "--warmup", "50"], r"--warmup must be an integer in \[0, steps\)"),
        (["--schedule", "linear"], r"argument --schedule: invalid choice"),
        (["--entropy", "nan"], r"argument --entropy: must be ≥ 0"),
        (["--loss", "gpso"], r"argument --loss: invalid choice 'gpso'.*did you mean 'gspo'\?"),
        (["--correction", "token-tis"], r"argument --correction: invalid choice 'token-tis'"),
        (["--rollout-mismatch", "-1"], r"argument --rollout-mismatch: must be ≥ 0"),
        (["--epochs", "0"], r"argument --epochs: must be positive"),
        (["--correction-threshold", "0"], r"--correction-threshold must be > 0"),
        (["--rolout-mismatch", "1"], r"did you mean --rollout-mismatch\?"),
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
    assert cli.main(["rl-seq", "--help"]) == 0  # the flags, and how to install the extra
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--variant" in help_text and "--warmup" in help_text
    assert 'pip install ".[seq]"' in help_text
    assert cli.main(["rl-seq", "--seed", "200"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "expectax rl-seq: error: the 'seq' extra is not installed (equinox): "
        'pip install "expectax[seq]" (from a checkout: pip install ".[seq]")'
    )
    assert not (tmp_path / "runs").exists()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"max_len must be at most 6"):
        sd.SeqConfig(max_len=7).validate()
    with pytest.raises(ValueError, match=r"variant: unknown 'x'"):
        sd.SeqConfig(variant="x").validate()


# ---- the policy losses, several updates per batch and a rollout engine that is not the trainer
OFF_POLICY = [
    "--loss",
    "cispo",
    "--epochs",
    "2",
    "--rollout-mismatch",
    "1",
    "--correction",
    "sequence-truncate",
]


@pytest.fixture(scope="module")
def off_policy_run(tmp_path_factory):
    """One CLI run with every new option: CISPO, 2 updates per batch, δ = 1, sequence TIS (one
    training of 10 steps on the easy task; without a correction the step is the tested one)."""
    out = tmp_path_factory.mktemp("rlseq-off")
    argv = [a for a in EASY]
    argv[argv.index("--steps") + 1] = "10"
    argv[argv.index("--eval-every") + 1] = "10"
    argv[argv.index("--warmup") + 1] = "1"
    capture = pytest.MonkeyPatch()
    import io

    buf = io.StringIO()
    capture.setattr(sys, "stdout", buf)
    capture.setattr(sd, "train", functools.partial(sd.train, compiler_options=FAST_COMPILE))
    try:
        rc = cli.main(["rl-seq", "--variant", "rloo", "--out", str(out), "--json", *argv,
                       *OFF_POLICY])  # fmt: skip
    finally:
        capture.undo()
    return rc, json.loads(buf.getvalue()), out


def test_off_policy_run_trains_with_the_new_options(off_policy_run):
    rc, summary, out = off_policy_run
    assert rc == 0
    (group,) = summary["groups"]
    assert group["variant"] == "rloo/cispo/epochs=2/mismatch=1/sequence-truncate"
    assert group["loss"] == "cispo" and group["epochs"] == 2
    assert group["rollout_mismatch"] == 1.0 and group["correction"] == "sequence-truncate"
    for r in summary["runs"]:
        np.testing.assert_allclose(r["mass_per_target"], 1.0, atol=1e-5)
        assert np.isfinite(r["success"]) and r["kl"] > 0  # it moved
    rows = (out / "log.csv").read_text().splitlines()
    head = rows[0].split(",")
    kl = [float(dict(zip(head, r.split(","), strict=True))["rollout_kl"]) for r in rows[1:]]
    # the rollout engine's KL(μ‖π) on each batch (k1 estimate): clearly not on-policy
    assert np.mean(kl) > 0.05, np.mean(kl)


def test_each_policy_loss_reduces_to_reinforce_on_the_first_update():
    """On-policy (ratio 1), CISPO, SAPO and VESPO give PPO's gradient; GSPO with the token sum
    too; GMPO normalises by length. The losses as the demo calls them (``_policy_loss``)."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32)
    tok = rng.integers(0, 5, size=(2, 3, 4))
    mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]] * 2, jnp.float32).reshape(2, 3, 4)
    adv = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)

    def grad(loss, **kw):
        c = sd.SeqConfig(variant="rloo", loss=loss, **kw)

        def f(x):
            lp = jnp.take_along_axis(jax.nn.log_softmax(x), jnp.asarray(tok)[..., None], -1)[..., 0]
            lp = lp * mask
            return sd._policy_loss(c, lp, None, None, adv, mask, None)

        return np.asarray(jax.grad(f)(logits))

    ppo = grad("ppo")
    for loss in ("cispo", "sapo", "vespo", "gspo"):
        np.testing.assert_allclose(grad(loss), ppo, rtol=1e-5, atol=1e-6, err_msg=loss)
    assert not np.allclose(grad("gmpo"), ppo, atol=1e-4)


def test_rollout_completion_reports_the_engines_log_probs(easy_run):
    c = sd.SeqConfig(**EASY_CONFIG)
    with jax.numpy_rank_promotion("raise"):
        model = sd.TransformerPolicy(c, jax.random.key(3))
    w = np.random.default_rng(4).normal(size=model.head.weight.shape).astype(np.float32)
    model = eqx.tree_at(lambda m: m.head.weight, model, jnp.asarray(w))
    offset = jnp.asarray(np.random.default_rng(5).normal(size=(c.max_len, c.digits + 1)))
    offset = offset.astype(jnp.float32)

    def both(k):
        y, m, lp_mu = sd.rollout_completion(model, c, jnp.asarray(1), k, offset)
        y0, m0, lp_pi = sd.rollout_completion(model, c, jnp.asarray(1), k, 0.0 * offset)
        return y, m, lp_mu, y0, m0, lp_pi, sd.token_logp(model, c, jnp.asarray(1), y0, m0)

    keys = jax.random.split(jax.random.key(0), 4)
    y, m, lp_mu, y0, m0, lp_pi, lp_trainer = (
        jax.jit(jax.vmap(both)).lower(keys).compile(FAST_COMPILE)(keys)
    )
    np.testing.assert_allclose(lp_pi, lp_trainer, atol=1e-5)  # no offset: the trainer's
    assert np.all(np.asarray(lp_mu)[np.asarray(m) == 0] == 0)
    assert not np.allclose(lp_mu * m, 0)


def test_vespo_refuses_a_correction_and_labels_name_the_options():
    with pytest.raises(ValueError, match=r"correction: loss vespo weighs each sequence"):
        sd.SeqConfig(loss="vespo", rollout_mismatch=1.0, correction="token-mask").validate()
    c = sd.SeqConfig(loss="gspo", rollout_mismatch=0.5, correction="sequence-mask")
    assert c.validate().label == "rloo/gspo/mismatch=0.5/sequence-mask"
    assert sd.SeqConfig().label == "rloo"
