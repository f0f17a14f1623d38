"""The confirmation margin: a run is solved when a fresh evaluation's ``mean − k·SE`` reaches the
threshold (``--confirm-margin k``). The SE is the evaluation's own (checked against numpy), a
huge ``k`` never confirms, ``k = 0`` is the old rule bitwise, bad ``k`` is a one-line error, and a
checkpoint written before the SE was recorded still loads."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from expectax.rl import load_policy
from expectax.rl.cli import main
from expectax.rl.train import (
    _CONFIRM,
    _TRAIN,
    Config,
    _batch_key,
    _policy,
    confirmed,
    jax_rollout,
    make_jax_trainer,
    mean_and_se,
    train,
)

SMALL = dict(episodes=24, batch_episodes=4, eval_episodes=4, hidden=(8,), backend="jax")


def test_confirm_returns_the_mean_and_its_standard_error():
    cfg = Config(**SMALL)
    tr = make_jax_trainer(cfg)
    params = tr.init().params
    key = jax.random.key(5)
    mean, se = jax.jit(tr.confirm)(params, key)
    batch = jax.jit(jax_rollout, static_argnums=(0, 3))(
        _policy(cfg), params["policy"], key, cfg.confirm_episodes
    )
    returns = np.asarray(batch.rewards, np.float64).sum(axis=1)
    assert returns.shape == (100,) and returns.std() > 1  # a random policy: varied returns
    assert float(mean) == np.float32(returns.mean())  # integer returns: the mean is exact
    want = returns.std(ddof=1) / math.sqrt(len(returns))
    assert float(se) == pytest.approx(want, rel=1e-5)
    # the same helper serves the Gymnasium backend's batches
    m2, se2 = mean_and_se(batch)
    assert float(m2) == float(mean) and float(se2) == float(se)


def test_the_rule():
    assert confirmed(480.0, 2.0, 2.0, 475.0) and not confirmed(480.0, 3.0, 2.0, 475.0)
    assert confirmed(475.0, 5.0, 0.0, 475.0) and not confirmed(474.9, 0.0, 0.0, 475.0)
    # a row without an SE (an old checkpoint's): the mean decides at k = 0, nothing confirms else
    assert confirmed(480.0, math.nan, 0.0, 475.0) and not confirmed(480.0, math.nan, 1.0, 475.0)
    assert not confirmed(math.nan, 1.0, 0.0, 475.0)


def _old_rule(cfg: Config, threshold: float):
    """The rule before the margin, from the trainer's pure functions: after each batch whose
    mean return reaches the threshold, confirm; solved at the first confirming mean ≥ it."""
    tr = make_jax_trainer(cfg)
    step, confirm = jax.jit(tr.step), jax.jit(tr.confirm)
    state = tr.init()
    for b in range(cfg.num_batches):
        state, metrics = step(state, _batch_key(cfg.seed, b, _TRAIN))
        if float(metrics["train_return"]) >= threshold:
            c = float(confirm(state.params, _batch_key(cfg.seed, b, _CONFIRM))[0])
            if c >= threshold:
                return state, int(state.episodes), c
    return state, None, None


def test_margin_zero_is_the_old_rule_bitwise_and_a_huge_margin_never_confirms():
    cfg = Config(**SMALL, solve_threshold=22.0, seed=7, confirm_margin=0.0)
    res = train(cfg, None, progress=False)
    # recorded with the code before the margin existed (commit 1c51a08): solved after 8
    # training episodes, confirming mean 2358 / 100
    assert res["solved"] and res["episodes_to_solve"] == 8
    assert res["confirm_return"] == float(np.float32(23.58))
    assert res["confirm_se"] > 0
    state, ets, conf = _old_rule(cfg, 22.0)
    assert (ets, conf) == (res["episodes_to_solve"], res["confirm_return"])
    for a, b in zip(*map(jax.tree_util.tree_leaves, (state, res["state"])), strict=True):
        np.testing.assert_array_equal(a, b)

    huge = train(Config(**SMALL, solve_threshold=15.0, confirm_margin=1e6), None, progress=False)
    h = huge["history"]
    assert not huge["solved"] and huge["episodes_to_solve"] is None
    assert huge["training_episodes"] == 24  # trained to the end of the budget
    # a confirmation after every batch whose mean reached 15 (most: a random policy), none held
    trig = np.asarray(h["train_return"]) >= 15.0
    assert trig.sum() >= 3, h["train_return"]
    np.testing.assert_array_equal(np.isfinite(h["confirm_return"]), trig)
    np.testing.assert_array_equal(np.isfinite(h["confirm_se"]), trig)
    assert huge["eval_episodes"] == 100 * (trig.sum() + 1)  # the confirmations + the final one


def test_the_margin_on_the_command_line(tmp_path, capsys):
    args = ["--episodes", "8", "--batch-episodes", "4", "--hidden", "8", "--quiet"]
    out = tmp_path / "run"
    assert main([*args, "--solve-threshold", "15", "--confirm-margin", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "a fresh evaluation confirmed" in text and " − 2 × " in text and "(SE) ≥ 15" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["confirm_margin"] == 2.0
    c, se = summary["confirm_return"], summary["confirm_se"]
    assert c - 2 * se >= 15.0 and se > 0
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("confirm_return") + 1] == "confirm_se"
    # resuming with another margin is refused, naming it
    code = main(
        [*args, "--solve-threshold", "15", "--confirm-margin", "0.5", "--out", str(out), "--resume"]
    )
    assert code == 2 and "confirm_margin" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "x"])
def test_a_bad_margin_is_a_one_line_error(tmp_path, capsys, value):
    try:
        code = main(["--confirm-margin", value, "--out", str(tmp_path / "o"), "--quiet"])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "argument --confirm-margin:" in err and repr(value) in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=r"confirm_margin must be a finite number ≥ 0"):
        Config(confirm_margin=float(value) if value != "x" else -1.0).validate()


def test_a_checkpoint_from_before_the_margin_still_loads(tmp_path):
    cfg = Config(**dict(SMALL, episodes=8), confirm_margin=0.0, stop_when_solved=False, seed=2)
    run = tmp_path / "run"
    want = train(cfg, tmp_path / "ref", progress=False)
    first = Config(**dict(SMALL, episodes=4), confirm_margin=0.0, stop_when_solved=False, seed=2)
    train(first, run, progress=False)
    # as written before confirm_margin and confirm_se existed
    with np.load(run / "checkpoint.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "history_confirm_se"}
    saved = json.loads(str(arrays["config"]))
    del saved["confirm_margin"]
    arrays["config"] = np.array(json.dumps(saved))
    np.savez(run / "checkpoint.npz", **arrays)
    pi = load_policy(run)
    assert pi.config.confirm_margin == 0.0 and pi.training_episodes == 4
    # resumed (the margin it had, 0): the same run as an uninterrupted one; the old rows' SE NaN
    res = train(cfg, run, resume=True, progress=False)
    assert res["training_episodes"] == 8 and np.isnan(res["history"]["confirm_se"][0])
    for a, b in zip(*map(jax.tree_util.tree_leaves, (want["state"], res["state"])), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"different settings \(confirm_margin"):
        train(dataclasses.replace(cfg, confirm_margin=1.0), run, resume=True, progress=False)


SHARDED = """
import json, jax, numpy as np
from jax.sharding import Mesh
from expectax.rl.train import Config, make_jax_trainer
cfg = Config(backend="jax", batch_episodes=4, hidden=(8,))
tr = make_jax_trainer(cfg)
params, key = tr.init().params, jax.random.key(3)
mesh = Mesh(np.array(jax.devices()[:4]), ("e",))
out = [[float(x) for x in jax.jit(t.confirm)(params, key)]
       for t in (tr, make_jax_trainer(cfg, mesh=mesh))]
print("RESULT " + json.dumps(out))
"""


def test_the_sharded_confirmation_has_the_same_mean_and_standard_error():
    """100 episodes over 4 host devices: the SE's squared deviations are a psum (another order
    of the float sum), the mean bitwise (integer returns)."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=300, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    (mean, se), (mean4, se4) = json.loads(lines[-1][len("RESULT ") :])
    assert mean4 == mean and se > 0
    assert se4 == pytest.approx(se, rel=1e-5)
