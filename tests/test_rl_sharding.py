"""Episodes over devices: ``make_jax_trainer(config, mesh=..., axis_name=...)`` and
``expectax rl --devices N``.

The test process has already started JAX with one CPU device, so the multi-device checks run
in one subprocess with ``--xla_force_host_platform_device_count=8`` (set before JAX starts)
that prints its numbers as JSON; the assertions are here. The claim checked: for a key, one
training step (rollout, gradient, Adam step, baseline state) with the batch's episodes split
over 1, 2 or 8 devices equals the unsharded step: bitwise on one device, to float tolerance
on 2 and 8 (the order of the sums over episodes differs); the evaluations bitwise (each
device simulates exactly the episodes it would alone); and sizes that do not split are
refused, naming the sizes that would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from helpers import once_per_session

from expectax.rl.cli import main
from expectax.rl.sharded import split_range

RTOL = 1e-5  # of the largest entry of each leaf

SCRIPT = """
import dataclasses, json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from expectax.rl.train import (Config, make_jax_trainer, _init_state, _make_update, _policy,
                               _rollout, make_optimizer)
from expectax.rl.sharded import EpisodeAxis

def tolist(tree):
    return [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(tree)]

def mesh_of(d):
    return Mesh(np.array(jax.devices()[:d]), ("e",))

out = {"device_count": jax.device_count()}
key = jax.random.key(11)
# 1. the whole step: rollout + leave-one-out baseline + advantage normalisation + entropy
cfg = Config(backend="jax", batch_episodes=8, confirm_episodes=104, hidden=(8,),
             normalize_advantages=True, entropy_coef=0.01)
tr = make_jax_trainer(cfg)
s0 = tr.init()
def step_out(step):
    state, metrics = step(s0, key)
    return {"state": tolist(state), "metrics": {k: float(v) for k, v in metrics.items()}}
out["step"] = {"ref": step_out(jax.jit(tr.step))}
for d in (1, 2, 8):
    trm = make_jax_trainer(cfg, mesh=mesh_of(d), axis_name="e")
    out["step"][d] = step_out(jax.jit(trm.step))
# 2. an evaluation of 8 episodes on 8 devices: the mean return of the unsharded rollout
policy = _policy(cfg)
batch = jax.jit(lambda p, k: _rollout(policy, p, k, EpisodeAxis(8), False))(
    s0.params["policy"], key)
trm = make_jax_trainer(dataclasses.replace(cfg, eval_episodes=8), mesh=mesh_of(8))
out["evaluate"] = [float(jnp.mean(jnp.sum(batch.rewards, axis=1))),
                   float(jax.jit(trm.evaluate)(s0.params, key))]
# 3. the moving-average baseline (the update alone, on that batch split over 8 devices)
for base in ("moving_average",):
    c = Config(backend="jax", batch_episodes=8, hidden=(8,), baseline=base)
    opt = make_optimizer(c)
    s = _init_state(c, policy, opt, 4, 500)
    s = s._replace(baseline_state=s.baseline_state._replace(
        mean_t=jnp.linspace(0.0, 5.0, 500), count=jnp.array(3, jnp.int32)))
    ref = jax.jit(_make_update(c, policy, opt))(s, batch)
    upd = _make_update(c, policy, opt, EpisodeAxis(8, "e", 8))
    sharded = jax.jit(jax.shard_map(upd, mesh=mesh_of(8), in_specs=(P(), P("e")),
                                    out_specs=P(), axis_names={"e"}))
    out[base] = {"ref": tolist(ref[0]), 8: tolist(sharded(s, batch)[0])}
# 4. sizes that do not split, a mesh with two axes and no axis_name
errors = {}
def err(name, fn):
    try:
        fn()
    except (TypeError, ValueError) as e:
        errors[name] = f"{type(e).__name__}: {e}"
err("batch", lambda: make_jax_trainer(Config(backend="jax", batch_episodes=12),
                                      mesh=mesh_of(8)))
err("confirm", lambda: make_jax_trainer(Config(backend="jax", batch_episodes=8),
                                        mesh=mesh_of(8)))
err("eval", lambda: make_jax_trainer(
    Config(backend="jax", batch_episodes=8, confirm_episodes=104, eval_every=2),
    mesh=mesh_of(8)))
mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("e", "m"))
err("two_axes", lambda: make_jax_trainer(Config(backend="jax"), mesh=mesh2))
out["errors"] = errors
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def devices(tmp_path_factory) -> dict:
    # one subprocess for the session, not one per xdist worker
    return once_per_session(tmp_path_factory, "rl-sharding-devices", _run_devices_script)


def _run_devices_script() -> dict:
    env = {
        **os.environ,
        # XLA's backend optimisation off: the same numbers for sharded and unsharded programs,
        # compiled in a fraction of the time
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _close(got: list, ref: list) -> None:
    assert len(got) == len(ref)
    for a, b in zip(got, ref, strict=True):
        a, b = np.asarray(a, float), np.asarray(b, float)
        scale = max(float(np.max(np.abs(b))), 1e-30) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * scale)


def test_sharded_step_equals_the_unsharded_step_on_1_2_and_8_devices(devices):
    assert devices["device_count"] == 8
    step = devices["step"]
    ref = step["ref"]
    assert step["1"] == ref  # one device: bitwise
    for d in ("2", "8"):
        # the state includes Adam's moments (0.5 × the gradient, 0.001 × its square): the
        # gradients agree, not only the parameters after the step
        _close(step[d]["state"], ref["state"])
        m, r = step[d]["metrics"], ref["metrics"]
        assert m["train_return"] == r["train_return"]  # a sum of integers
        assert m["params_finite"] == r["params_finite"] == 1.0
        assert abs(m["grad_norm"] - r["grad_norm"]) <= RTOL * r["grad_norm"]
        # the loss sums normalised advantages (|A| ~ 1 at each of the ~train_return steps of
        # an episode) that cancel to ~0: its rounding is relative to that many terms
        assert abs(m["loss"] - r["loss"]) <= RTOL * r["train_return"]


def test_sharded_evaluation_is_the_unsharded_rollouts_mean_return(devices):
    assert devices["evaluate"][0] == devices["evaluate"][1]


def test_sharded_update_with_the_moving_average_baseline(devices):
    _close(devices["moving_average"]["8"], devices["moving_average"]["ref"])


def test_sizes_that_do_not_split_are_refused(devices):
    e = devices["errors"]
    assert "batch_episodes=12 episodes do not split evenly over the 8 devices" in e["batch"]
    assert "--batch-episodes), e.g. 8 or 16" in e["batch"]
    assert "confirm_episodes=100" in e["confirm"] and "e.g. 96 or 104" in e["confirm"]
    assert "eval_episodes=100" in e["eval"]
    assert "pass axis_name=" in e["two_axes"]


@pytest.mark.parametrize("partitionable", [True, False])
def test_split_range_is_a_block_of_split(partitionable):
    key = jax.random.fold_in(jax.random.key(3), 9)
    with jax.threefry_partitionable(partitionable):
        full = jax.random.key_data(jax.random.split(key, 24))
        got = jax.random.key_data(jax.jit(split_range, static_argnums=(1, 3))(key, 24, 21, 3))
        np.testing.assert_array_equal(got, full[21:24])


def test_cli_devices_errors(tmp_path, capsys):
    # this process runs JAX on one CPU device already: --devices 2 cannot get two
    assert jax.device_count() == 1
    assert main(["--devices", "2", "--batch-episodes", "8", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--devices 2: JAX has 1 cpu device(s)" in err and "XLA_FLAGS" in err
    assert len(err.strip().splitlines()) == 1
    code = main(["--env", "Acrobot-v1", "--devices", "1", "--out", str(tmp_path / "b")])
    assert code == 2
    assert "pure-JAX backend only" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--devices", "1"]) == 2
    assert "--devices belongs to training" in capsys.readouterr().err
