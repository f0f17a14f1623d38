"""Tests of ``expectax vae`` (src/expectax/vi/vae.py) and its data loaders (vi/digits.py).

The statistical checks compare Monte Carlo quantities with exact values by enumerating all
``2^L`` latent configurations of a small model, with tolerances from standard errors.
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_unbiased, estimates

from expectax.cliutil import ArgumentParser
from expectax.vi import vae
from expectax.vi.digits import load_digits, load_npz

DATA = load_digits()
SMALL = vae.VAEConfig(data_dim=64, latents=3, model="linear")


def _parse(argv: list[str]) -> argparse.Namespace:
    return vae.configure_parser(ArgumentParser(prog="expectax vae")).parse_args(argv)


def _all_latents(n: int) -> jnp.ndarray:
    return jnp.array(list(itertools.product([0.0, 1.0], repeat=n)))


def exact_elbo(params, x, config):
    """ELBO and log p(x) of one image by enumerating every latent configuration."""
    bs = _all_latents(config.latents)
    logq = vae._bernoulli_log_pmf(vae.encode(params, x, config), bs)
    logw = jax.vmap(lambda b: vae._log_weight(params, x, b, config))(bs)
    return jnp.sum(jnp.exp(logq) * logw), jax.nn.logsumexp(logw + logq)


def _params(seed: int = 0, config=SMALL):
    return vae.init_params(jax.random.key(seed), config, DATA.train.mean(axis=0))


@functools.cache
def _exact_loss_grad():
    """The exact gradient of the loss (−ELBO averaged over the first two training images) at
    ``_params()``, by enumeration: jitted and computed once per process."""
    batch = jnp.asarray(DATA.train[:2])
    loss = lambda p: -jnp.mean(jax.vmap(lambda x: exact_elbo(p, x, SMALL)[0])(batch))  # noqa: E731
    return jax.jit(jax.grad(loss))(_params())


# --------------------------------------------------------------------------- data


def test_digits_are_binary_and_split_once():
    assert DATA.train.shape == (1500, 64) and DATA.test.shape == (297, 64)
    assert set(np.unique(DATA.train)) == {0.0, 1.0}
    again = load_digits()
    np.testing.assert_array_equal(again.test, DATA.test)


def test_npz_loader_reads_keras_format(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    xtr = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    xte = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(path, x_train=xtr, x_test=xte, y_train=np.zeros(20), y_test=np.zeros(5))
    data = load_npz(path)
    assert data.train.shape == (20, 784) and data.test.shape == (5, 784)
    assert data.shape == (28, 28)
    np.testing.assert_array_equal(data.train, (xtr.reshape(20, -1) / 255.0 > 0.5))


def test_npz_loader_errors_name_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data .*no such file.*x_train and x_test"):
        load_npz(tmp_path / "missing.npz")
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['x_train', 'x_test'\]"):
        load_npz(path)
    np.savez(path, x_train=np.full((3, 4), 2.0), x_test=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        load_npz(path)
    np.savez(path, x_train=np.zeros((3, 4)), x_test=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="same image size"):
        load_npz(path)


# --------------------------------------------------------------------------- the model


def test_elbo_and_iw_bound_match_enumeration():
    """Monte Carlo ELBO ≈ exact ELBO; E[IW_100] lies between the ELBO and log p(x)."""
    params = _params()
    x = jnp.asarray(DATA.test[0])
    elbo_exact, log_px = exact_elbo(params, x, SMALL)
    keys = jax.random.split(jax.random.key(1), 1000)
    e = jax.jit(jax.vmap(lambda k: vae.elbo(params, x, k, SMALL)))(keys)
    iw = jax.jit(jax.vmap(lambda k: vae.importance_weighted_bound(params, x, k, SMALL, 100)))(keys)
    se = lambda v: float(jnp.std(v, ddof=1) / jnp.sqrt(v.size))
    assert abs(float(e.mean()) - float(elbo_exact)) < 5 * se(e)
    assert float(iw.mean()) - 5 * se(iw) <= float(log_px)
    # with k = 1 the bound is the ELBO, sample for sample
    k0 = jax.random.key(2)
    assert jnp.allclose(
        vae.importance_weighted_bound(params, x, k0, SMALL, 1), vae.elbo(params, x, k0, SMALL, 1)
    )


def test_iw_bound_exceeds_elbo_on_average():
    """Over held-out images, paired differences IW_100 − ELBO are positive beyond 5 s.e."""
    config = vae.VAEConfig(data_dim=64, latents=16, model="nonlinear")
    params = _params(3, config)
    xs = jnp.asarray(DATA.test)
    keys = jax.random.split(jax.random.key(4), xs.shape[0])
    e = jax.jit(jax.vmap(lambda x, k: vae.elbo(params, x, k, config)))(xs, keys)
    iw = jax.jit(jax.vmap(lambda x, k: vae.importance_weighted_bound(params, x, k, config, 100)))(
        xs, keys
    )
    diff = np.asarray(iw - e)
    assert diff.mean() > 5 * diff.std(ddof=1) / np.sqrt(diff.size)


UNBIASED = ["reinforce", "rloo", "arm", "disarm", "rebar", "relax", "unordered-set"]


@pytest.mark.parametrize("name", UNBIASED)
def test_loss_gradient_is_unbiased(name):
    """``jax.grad`` of the training loss matches the exact ELBO gradient (enumeration)."""
    if not vae._available(name):
        pytest.skip(f"{name} is not implemented in this checkout yet")
    estimator = vae.make_estimator(name, latents=SMALL.latents, key=jax.random.key(6))
    if name == "relax":  # switch the surrogate network on (it starts at zero, i.e. as REBAR)
        net = jax.tree_util.tree_map(
            lambda w: w + 0.5 * jax.random.normal(jax.random.key(7), w.shape), estimator.net
        )
        estimator = type(estimator)(estimator.log_temperature, estimator.eta, net)
    params = _params()
    batch = jnp.asarray(DATA.train[:2])
    loss = vae.make_loss(estimator, SMALL, vae.num_samples_for(estimator, 2))
    exact = _exact_loss_grad()
    grads = estimates(lambda p, k: jax.grad(loss)(p, batch, k), params, jax.random.key(5), 2000)
    assert_unbiased(grads, exact, k=5, bonferroni=True)


def test_vimco_gradient_is_that_of_the_two_sample_bound():
    """VIMCO trains E[log ½(w_1 + w_2)]: its loss gradient matches the enumerated one."""
    if not vae._available("vimco"):
        pytest.skip("vimco is not implemented in this checkout yet")
    params = _params()
    batch = jnp.asarray(DATA.train[:2])
    bs = _all_latents(SMALL.latents)

    def exact_bound(p, x):
        logq = vae._bernoulli_log_pmf(vae.encode(p, x, SMALL), bs)
        logw = jax.vmap(lambda b: vae._log_weight(p, x, b, SMALL))(bs)
        pair = jnp.logaddexp(logw[:, None], logw[None, :]) - jnp.log(2.0)
        return jnp.sum(jnp.exp(logq[:, None] + logq[None, :]) * pair)

    exact = jax.jit(jax.grad(lambda p: -jnp.mean(jax.vmap(lambda x: exact_bound(p, x))(batch))))
    exact = exact(params)
    loss = vae.make_loss(vae.make_estimator("vimco"), SMALL, 2)
    grads = estimates(lambda p, k: jax.grad(loss)(p, batch, k), params, jax.random.key(8), 2000)
    assert_unbiased(grads, exact, k=5, bonferroni=True)


def test_unordered_set_needs_few_latents(tmp_path):
    if not vae._available("unordered-set"):
        pytest.skip("unordered-set is not implemented in this checkout yet")
    with pytest.raises(SystemExit, match="--latents must be at most 16; got 32"):
        vae.run(_parse(["--estimator", "unordered-set", "--out", str(tmp_path)]))


def test_num_samples_counts_evaluations():
    assert vae.num_samples_for(vae.make_estimator("reinforce"), 2) == 2
    assert vae.num_samples_for(vae.make_estimator("reinforce"), 5) == 5


# --------------------------------------------------------------------------- the command


def test_short_run_writes_files_and_improves_elbo(tmp_path):
    name = "rloo" if vae._available("rloo") else "reinforce"
    out = tmp_path / "run"
    args = _parse(
        [
            "--estimator",
            name,
            "--steps",
            "300",
            "--eval-every",
            "150",
            "--latents",
            "8",
            "--var-repeats",
            "4",
            "--iw-samples",
            "20",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert vae.run(args) == 0
    with pytest.raises(SystemExit, match="already holds an earlier run .*--overwrite"):
        vae.run(args)  # never overwrites an earlier run silently
    for f in ["log.csv", "summary.csv", "summary.json", "summary.md", "curve.png"]:
        assert os.path.getsize(out / f) > 0, f
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["estimator"], r["seed"]) for r in rows} == {(name, "0")}
    assert [int(r["step"]) for r in rows] == [0, 150, 300]
    first, last = rows[0], rows[-1]
    gain = float(last["train_elbo"]) - float(first["train_elbo"])
    se = np.hypot(float(last["train_elbo_se"]), float(first["train_elbo_se"]))
    assert gain > 5 * se, (gain, se)
    assert all(float(r["grad_var"]) > 0 for r in rows)
    with open(out / "summary.csv") as fh:
        (summary,) = list(csv.DictReader(fh))
    assert summary["estimator"] == name and summary["evaluations"] == "2"
    assert summary["status"] == "ok"


def test_run_on_npz_file(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=rng.random((40, 6, 6)), x_test=rng.random((10, 6, 6)))
    args = _parse(
        [
            "--estimator",
            "reinforce",
            "--steps",
            "20",
            "--eval-every",
            "10",
            "--latents",
            "4",
            "--batch-size",
            "8",
            "--var-repeats",
            "2",
            "--data",
            str(path),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert vae.run(args) == 0
    assert (tmp_path / "o" / "summary.csv").exists()


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse(["--estimator", "nope", "--out", str(tmp_path)])
    assert "invalid choice 'nope'; choose from" in capsys.readouterr().err
    for argv, msg in [
        (["--steps", "0"], "argument --steps: must be positive"),
        (["--seed", "-1"], "argument --seed: must satisfy 0 <= seed < 2\\*\\*32"),
        (["--lr", "nan"], "argument --lr: must be positive and finite"),
    ]:
        with pytest.raises(SystemExit):
            _parse(argv)
        assert re.search(msg, capsys.readouterr().err)
    with pytest.raises(SystemExit, match="--var-repeats must be at least 2"):
        vae.run(_parse(["--var-repeats", "1", "--out", str(tmp_path)]))
    with pytest.raises(SystemExit, match="--train-size applies to --data FILE"):
        vae.run(_parse(["--train-size", "10", "--out", str(tmp_path)]))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit, match="is an existing file; give a directory"):
        vae.run(_parse(["--estimator", "reinforce", "--out", str(f)]))
    with pytest.raises(SystemExit, match="--data .*no such file"):
        vae.run(
            _parse(
                [
                    "--estimator",
                    "reinforce",
                    "--data",
                    str(tmp_path / "x.npz"),
                    "--out",
                    str(tmp_path),
                ]
            )
        )


def test_missing_estimator_family_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(vae.ESTIMATORS, "arm", ("expectax.estimators.not_there", "ARM", ""))
    with pytest.raises(SystemExit, match="--estimator arm: ARM is not available .* Pick one"):
        vae.run(_parse(["--estimator", "arm", "--out", str(tmp_path)]))


# --------------------------------------------------------------------------- matching the reference


def test_straight_through_gumbel_softmax_is_an_option():
    est = vae.make_estimator("st-gumbel-softmax", temperature=0.3)
    assert type(est).__name__ == "GumbelSoftmax" and est.straight_through
    assert float(est.temperature) == pytest.approx(0.3)
    assert not vae.make_estimator("gumbel-softmax").straight_through


def test_zero_mean_log_q_term_is_an_option():
    """Dropping −∇φ log q changes the encoder's gradient, not the value or the decoder's."""
    est = vae.make_estimator("rloo")
    params = _params()
    batch = jnp.asarray(DATA.train[:4])
    key = jax.random.key(3)
    drop = vae.make_loss(est, SMALL, 2)
    keep = vae.make_loss(est, SMALL, 2, log_q_grad=True)
    # jitted: value and gradient of each loss in one compiled call (eagerly, op by op, slow)
    (v_drop, g_drop), (v_keep, g_keep) = (
        jax.jit(jax.value_and_grad(loss))(params, batch, key) for loss in (drop, keep)
    )
    assert float(v_drop) == pytest.approx(float(v_keep))
    np.testing.assert_allclose(g_drop["decoder"][0]["w"], g_keep["decoder"][0]["w"], rtol=1e-5)
    assert not np.allclose(g_drop["encoder"][0]["w"], g_keep["encoder"][0]["w"])


def test_gradient_with_the_log_q_term_is_unbiased_too():
    estimator = vae.make_estimator("disarm")
    params = _params()
    batch = jnp.asarray(DATA.train[:2])
    loss = vae.make_loss(estimator, SMALL, 1, log_q_grad=True)
    exact = _exact_loss_grad()
    grads = estimates(lambda p, k: jax.grad(loss)(p, batch, k), params, jax.random.key(9), 2000)
    assert_unbiased(grads, exact, k=5, bonferroni=True)


def test_batches_come_from_shuffled_epochs_and_chunks_agree():
    from expectax.vi.vae_train import batch_rows

    rows = batch_rows(seed=1, start=0, steps=70, batch_size=50, n=1500)
    flat = rows.reshape(-1)
    assert sorted(flat[:1500]) == list(range(1500)) and sorted(flat[1500:3000]) == list(range(1500))
    parts = np.concatenate([batch_rows(1, 0, 33, 50, 1500), batch_rows(1, 33, 37, 50, 1500)])
    np.testing.assert_array_equal(parts, rows)


def test_per_row_is_a_batched_lax_map():
    from expectax.vi.vae_train import _per_row

    xs = jnp.arange(250.0 * 3).reshape(250, 3)
    got = _per_row(lambda x, k: jnp.sum(x) + jax.random.uniform(k), xs, jax.random.key(0))
    keys = jax.random.split(jax.random.key(0), 250)
    want = jax.vmap(lambda x, k: jnp.sum(x) + jax.random.uniform(k))(xs, keys)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_npz_train_size_keeps_the_first_images(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "m.npz"
    xtr = rng.random((30, 4, 4))
    np.savez(path, x_train=xtr, x_test=rng.random((5, 4, 4)))
    data = load_npz(path, train_size=20)
    np.testing.assert_array_equal(data.train, xtr.reshape(30, -1)[:20] > 0.5)
    with pytest.raises(ValueError, match="--train-size must be between 1 and the 30 images"):
        load_npz(path, train_size=31)
    assert load_digits(test_size=500).test.shape == (500, 64)
