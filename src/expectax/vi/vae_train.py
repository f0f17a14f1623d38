"""Training and evaluation of the discrete VAE (``expectax vae``); the model is in
:mod:`expectax.vi.vae_model`.

:func:`train` runs Adam on minibatches drawn from shuffled epochs and, at step 0, every
``eval_every`` steps and at the end, measures

- the training ELBO over the whole training set (one exact sample per image, as the DisARM
  reference's ``evaluate(train_ds, num_eval_samples=1)``), with its standard error;
- the held-out importance-weighted bound with ``k = iw_samples`` (100) over the whole test set;
- the variance of the encoder's gradient: ``var_repeats`` independent estimates on a fixed
  minibatch, the per-coordinate variance averaged over the encoder's parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from expectax.vi.digits import Dataset
from expectax.vi.vae_model import (
    TRAINED_CONTROL_VARIATE,
    VAEConfig,
    elbo,
    importance_weighted_bound,
    init_params,
    make_estimator,
    make_loss,
    num_samples_for,
)

__all__ = ["Curve", "batch_rows", "train"]

PyTree = Any


class Curve(NamedTuple):
    """Learning curve of one run: arrays over evaluation points."""

    step: np.ndarray
    train_elbo: np.ndarray
    train_elbo_se: np.ndarray
    test_iw: np.ndarray
    test_iw_se: np.ndarray
    grad_var: np.ndarray
    seconds: np.ndarray


class _State(NamedTuple):
    params: PyTree
    opt_state: PyTree
    estimator: Any  # REBAR/RELAX: the control-variate parameters are trained along
    cv_opt_state: PyTree


def _per_row(
    fn: Callable[[jax.Array, jax.Array], jax.Array], xs: jax.Array, key: jax.Array
) -> jax.Array:
    """``fn(x, key_x)`` for each row of ``xs``, ``EVAL_BATCH`` rows at a time: shape ``(n,)``."""
    keys = jax.random.split(key, xs.shape[0])
    return jax.lax.map(lambda a: fn(*a), (xs, keys), batch_size=min(EVAL_BATCH, xs.shape[0]))


#: Rows evaluated together by the whole-data-set evaluations (``jax.lax.map(batch_size=)``).
EVAL_BATCH = 100


def batch_rows(seed: int, start: int, steps: int, batch_size: int, n: int) -> np.ndarray:
    """Row indices of steps ``start … start + steps − 1``: consecutive batches of shuffled epochs.

    Epoch ``e`` is the permutation ``default_rng([seed, e])`` of the ``n`` training images, and
    batches run across epoch ends (the reference's ``repeat().shuffle().batch()``), so a run can
    be computed chunk by chunk.
    """
    first, last = start * batch_size, (start + steps) * batch_size
    epochs = range(first // n, -(-last // n))
    perm = np.concatenate([np.random.default_rng([seed, 7, e]).permutation(n) for e in epochs])
    offset = epochs[0] * n
    return perm[first - offset : last - offset].reshape(steps, batch_size).astype(np.int32)


def _mean_and_se(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.mean(values), jnp.std(values, ddof=1) / jnp.sqrt(values.shape[0])


def train(
    estimator_name: str,
    data: Dataset,
    *,
    seed: int = 0,
    steps: int = 3000,
    latents: int = 32,
    model: str = "linear",
    batch_size: int = 50,
    learning_rate: float = 1e-3,
    evaluations: int = 2,
    temperature: float = 0.5,
    cv_learning_rate: float = 1e-2,
    eval_every: int = 250,
    var_repeats: int = 16,
    iw_samples: int = 100,
    eval_points: int | None = None,
    log_q_grad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[Curve, dict[str, Any]]:
    """Train one VAE with one estimator; return its learning curve and a summary row.

    ``eval_points`` limits the evaluations to the first images of each set (None: all of
    them); ``log_q_grad`` keeps the zero-mean ``−∇φ log q`` term (see
    :func:`expectax.vi.vae_model.make_loss`).
    """
    try:
        import optax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("expectax vae trains with optax's Adam: pip install optax") from err

    key = jax.random.key(seed)
    k_init, k_train, k_eval, k_cv = jax.random.split(key, 4)
    estimator = make_estimator(estimator_name, temperature=temperature, latents=latents, key=k_cv)
    num_samples = num_samples_for(estimator, evaluations)
    config = VAEConfig(data_dim=data.train.shape[1], latents=latents, model=model)
    params = init_params(k_init, config, data.train.mean(axis=0))
    optimizer = optax.adam(learning_rate)
    trained_cv = estimator_name in TRAINED_CONTROL_VARIATE
    cv_optimizer = optax.adam(cv_learning_rate)
    cv_state = cv_optimizer.init(estimator) if trained_cv else None
    state = _State(params, optimizer.init(params), estimator, cv_state)

    train_x = jnp.asarray(data.train)
    train_eval = train_x[:eval_points]  # eval_points None: the whole set
    test_eval = jnp.asarray(data.test[:eval_points])
    var_batch = train_x[:batch_size]

    def loss(params: PyTree, batch: jax.Array, key: jax.Array, est: Any) -> jax.Array:
        return make_loss(est, config, num_samples, log_q_grad=log_q_grad)(params, batch, key)

    def step(state: _State, xs: tuple[jax.Array, jax.Array]) -> tuple[_State, None]:
        k_grad, rows = xs
        batch = train_x[rows]
        est, cv_opt_state = state.estimator, state.cv_opt_state
        if trained_cv:
            # REBAR/RELAX: the same estimate updates the model, and ∇ψ ‖ĝ_encoder‖² (an
            # unbiased estimate of ∇ψ Var[ĝ], Tucker et al. 2017) the control variate.
            def encoder_sq(est: Any) -> tuple[jax.Array, PyTree]:
                g = jax.grad(loss)(state.params, batch, k_grad, est)
                leaves = jax.tree_util.tree_leaves(g["encoder"])
                return sum(jnp.sum(jnp.square(leaf)) for leaf in leaves), g

            cv_grads, grads = jax.grad(encoder_sq, has_aux=True)(est)
            cv_updates, cv_opt_state = cv_optimizer.update(cv_grads, cv_opt_state, est)
            est = optax.apply_updates(est, cv_updates)
        else:
            grads = jax.grad(loss)(state.params, batch, k_grad, est)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return _State(params, opt_state, est, cv_opt_state), None

    @jax.jit
    def run_steps(state: _State, keys: jax.Array, rows: jax.Array) -> _State:
        return jax.lax.scan(step, state, (keys, rows))[0]

    @jax.jit
    def evaluate(params: PyTree, est: Any, key: jax.Array) -> tuple[jax.Array, ...]:
        k1, k2, k3 = jax.random.split(key, 3)
        train_elbo = _per_row(lambda x, k: elbo(params, x, k, config, 1), train_eval, k1)
        test_iw = _per_row(
            lambda x, k: importance_weighted_bound(params, x, k, config, iw_samples), test_eval, k2
        )
        grads = jax.vmap(lambda k: jax.grad(loss)(params, var_batch, k, est))(
            jax.random.split(k3, var_repeats)
        )
        enc = jax.tree_util.tree_leaves(grads["encoder"])
        var = sum(jnp.sum(jnp.var(g, axis=0, ddof=1)) for g in enc) / sum(g[0].size for g in enc)
        return (*_mean_and_se(train_elbo), *_mean_and_se(test_iw), var)

    rows: list[tuple[float, ...]] = []
    start = time.perf_counter()
    chunk = math.gcd(eval_every, 50)
    done = 0
    diverged_at = None
    while True:
        if done % eval_every == 0 or done == steps:
            stats = evaluate(state.params, state.estimator, jax.random.fold_in(k_eval, done))
            rows.append((done, *(float(a) for a in stats), time.perf_counter() - start))
            if not all(math.isfinite(v) for v in rows[-1][1:4:2]):
                diverged_at = done  # NaN/inf ELBO or bound: stop, report it as diverged
                break
        if done == steps:
            break
        n = min(chunk, steps - done)
        keys = jax.random.split(jax.random.fold_in(k_train, done), n)
        idx = batch_rows(seed, done, n, batch_size, train_x.shape[0])
        state = run_steps(state, keys, jnp.asarray(idx))
        done += n
        if progress is not None:
            progress(n)
    arr = np.array(rows, dtype=np.float64)
    curve = Curve(arr[:, 0].astype(int), *arr[:, 1:].T)
    summary = {
        "estimator": estimator_name,
        "seed": seed,
        "num_samples": num_samples,
        "evaluations": estimator.evaluations(num_samples),
        "steps": steps,
        "status": "ok" if diverged_at is None else f"diverged at step {diverged_at}",
        "train_elbo": curve.train_elbo[-1],
        "test_iw": curve.test_iw[-1],
        "grad_var": curve.grad_var[-1],
        "seconds": curve.seconds[-1],
        "control_variate": "",
    }
    if trained_cv:
        est = state.estimator
        summary["control_variate"] = (
            f"temperature={float(jnp.exp(est.log_temperature)):.3g} eta={float(est.eta):.3g}"
        )
    return curve, summary
