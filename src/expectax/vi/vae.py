r"""``expectax vae``: a variational autoencoder with Bernoulli latents, trained with any estimator.

The benchmark of the discrete-gradient literature (REBAR, RELAX, ARM, DisARM, VIMCO): maximise
the evidence lower bound of binarised images ``x`` under a model with ``L`` binary latents ``b``,

.. math::

    \mathrm{ELBO}(\theta, \phi; x) = \mathbb{E}_{q_\phi(b \mid x)}\big[
        \log p_\theta(x \mid b) + \log p_\theta(b) - \log q_\phi(b \mid x) \big],
    \qquad q_\phi(b \mid x)
    = \prod_{l=1}^L \mathrm{Bernoulli}\big(b_l;\ \sigma(\mathrm{enc}_\phi(x)_l)\big).

The expectation over ``q_φ(b | x)`` of each data point is an ``expectax.expectation`` (the
integrand depends on θ and φ, so the gradient includes the ``∇ f`` term), vmapped over the
minibatch; the estimator chosen with ``--estimator`` supplies the gradient for φ. The
architectures are those of Dong, Mnih & Tucker (2020), after Tucker et al. (2017):

- ``linear``: one stochastic layer of Bernoulli units; encoder ``x → b`` and decoder ``b → x``
  are single affine maps (logits).
- ``nonlinear``: the same with two deterministic hidden layers of 200 units and
  LeakyReLU(0.3) on each side.

The prior ``p_θ(b)`` is a factorised Bernoulli with learned logits; the decoder's output bias
starts at the logit of the training pixel means.

Along training it reports the training ELBO (exact Bernoulli samples, also for the relaxed
estimators), a held-out importance-weighted bound with ``k = 100`` samples (Burda et al., 2016)

.. math::

    \mathcal L_k(x) = \mathbb{E}\Big[\log \frac1k \sum_{j=1}^k
        \frac{p_\theta(x, b_j)}{q_\phi(b_j \mid x)}\Big] \le \log p_\theta(x),
    \qquad b_j \sim q_\phi(\cdot \mid x),

and the variance of the encoder's gradient estimate, from ``--var-repeats`` independent estimates
on a fixed minibatch (mean over the encoder's parameters of the per-coordinate variance). It
writes one CSV of learning curves per run, ``summary.csv`` with mean ± standard error over seeds,
and plots comparing the estimators.

Example::

    expectax vae --estimator rloo disarm --seed 0 1 2 --steps 3000 --out runs/vae

References:
  Dong, Mnih & Tucker (2020), "DisARM: an antithetic gradient estimator for binary latent
  variables", NeurIPS. Yin & Zhou (2019), "ARM: augment-REINFORCE-merge gradient for
  stochastic binary networks", ICLR. Tucker et al. (2017), "REBAR". Grathwohl et al. (2018),
  "Backpropagation through the void" (RELAX). Mnih & Rezende (2016), "Variational inference
  for Monte Carlo objectives" (VIMCO). Kool, van Hoof & Welling (2019, 2020), "Buy 4 REINFORCE
  samples, get a baseline for free!" (RLOO) and "Estimating gradients for discrete random
  variables by sampling without replacement" (unordered set). Jang, Gu & Poole (2017) and
  Maddison, Mnih & Teh (2017) (Gumbel-softmax / Concrete). Burda, Grosse & Salakhutdinov
  (2016), "Importance weighted autoencoders".
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import math
import os
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import expectax as ex
from expectax.vi.digits import Dataset, load_digits, load_npz

__all__ = [
    "ESTIMATORS",
    "Curve",
    "MAX_JOINT_LATENTS",
    "VAEConfig",
    "available_estimators",
    "configure_parser",
    "elbo",
    "encode",
    "importance_weighted_bound",
    "init_params",
    "log_joint",
    "main",
    "make_estimator",
    "make_loss",
    "num_samples_for",
    "run",
    "summary_markdown",
    "train",
]

PyTree = Any

# --------------------------------------------------------------------------- estimators

#: ``--estimator`` name → (module, class, description). Imported lazily by name, so a
#: family that is missing from this install of expectax gives a clear error, not a crash.
ESTIMATORS: dict[str, tuple[str, str, str]] = {
    "reinforce": ("expectax.estimators.score_function", "ScoreFunction", "no baseline"),
    "rloo": ("expectax.baselines", "LeaveOneOut", "ScoreFunction(baseline=LeaveOneOut())"),
    "arm": ("expectax.estimators.arm", "ARM", "antithetic pairs"),
    "disarm": ("expectax.estimators.arm", "DisARM", "antithetic pairs"),
    "rebar": ("expectax.estimators.relax", "REBAR", "control variate trained"),
    "relax": ("expectax.estimators.relax", "RELAX", "control variate trained"),
    "vimco": ("expectax.estimators.multi_sample", "VIMCO", "trains the k-sample bound"),
    "unordered-set": ("expectax.estimators.multi_sample", "UnorderedSet", "without replacement"),
    "gumbel-softmax": ("expectax.estimators.relaxed", "GumbelSoftmax", "biased relaxation"),
    "st": ("expectax.estimators.relaxed", "StraightThrough", "biased"),
}


def _load(name: str) -> Any:
    if name not in ESTIMATORS:
        raise ValueError(
            f"--estimator {name!r} is unknown; choose from {', '.join(ESTIMATORS)} (or 'all')."
        )
    module, cls, _ = ESTIMATORS[name]
    try:
        obj = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        ready = [n for n in ESTIMATORS if n != name and _available(n)]
        raise ValueError(
            f"--estimator {name}: {cls} is not available in this installation of expectax "
            f"({module}.{cls} could not be imported: {err}). Pick one that is: "
            f"{', '.join(ready)}."
        ) from err
    return obj


def _available(name: str) -> bool:
    module, cls, _ = ESTIMATORS[name]
    try:
        return hasattr(importlib.import_module(module), cls)
    except ImportError:
        return False


def available_estimators() -> list[str]:
    """The ``--estimator`` names whose implementation this install of expectax provides."""
    return [n for n in ESTIMATORS if _available(n)]


def make_estimator(
    name: str, *, temperature: float = 0.5, latents: int = 32, key: jax.Array | None = None
) -> ex.Estimator:
    """The estimator behind an ``--estimator`` name, with its defaults.

    ``temperature`` sets the Gumbel-softmax relaxation; ``latents`` and ``key`` size and
    initialise RELAX's surrogate network (``RELAX.create``). REBAR and RELAX come with float
    arrays as control-variate parameters, ready to be trained (see :func:`train`).
    """
    obj = _load(name)
    if name == "reinforce":
        return obj()
    if name == "rloo":
        return ex.ScoreFunction(baseline=obj())
    if name in ("gumbel-softmax", "st"):
        fields = (
            {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        )
        return obj(temperature=temperature) if "temperature" in fields else obj()
    if name == "relax":
        key = jax.random.key(0) if key is None else key
        return obj.create(key, num_latents=latents, hidden=(RELAX_HIDDEN,))
    if name == "rebar":
        est = obj()
        return jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.result_type(float)), est)
    return obj()


#: Width of RELAX's surrogate network ``r_ψ(σ(z))`` (one tanh hidden layer).
RELAX_HIDDEN = 50

#: Estimators whose control-variate parameters are trained to minimise the gradient variance.
TRAINED_CONTROL_VARIATE = ("rebar", "relax")


def num_samples_for(estimator: ex.Estimator, evaluations: int) -> int:
    """The largest ``num_samples`` whose cost is at most ``evaluations`` evaluations of f.

    ARM and DisARM count antithetic pairs (2 evaluations each), so ``--evaluations 2`` gives
    them one pair and RLOO two samples: equal cost, as in the DisARM paper's comparisons.
    Estimators that need more than the budget get their minimum (reported in the CSV).
    """
    best = estimator.min_samples()
    n = best
    while n <= evaluations and estimator.evaluations(n) <= evaluations:
        best = n
        n += 1
    return best


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Static description of the model: data dimension, latents, architecture."""

    data_dim: int
    latents: int = 32
    model: str = "linear"
    hidden: int = 200
    slope: float = 0.3


def _dense(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
    scale = jnp.sqrt(1.0 / n_in)
    return {
        "w": scale * jax.random.truncated_normal(key, -2.0, 2.0, (n_in, n_out)),
        "b": jnp.zeros(n_out),
    }


def _widths(config: VAEConfig, n_in: int, n_out: int) -> list[int]:
    if config.model == "linear":
        return [n_in, n_out]
    return [n_in, config.hidden, config.hidden, n_out]


def init_params(key: jax.Array, config: VAEConfig, pixel_mean: np.ndarray | None = None) -> PyTree:
    """Encoder, decoder and prior parameters; the decoder's output bias at the pixel logits."""
    if config.model not in ("linear", "nonlinear"):
        raise ValueError(f"--model must be 'linear' or 'nonlinear', got {config.model!r}.")
    k_enc, k_dec = jax.random.split(key)
    enc_w = _widths(config, config.data_dim, config.latents)
    dec_w = _widths(config, config.latents, config.data_dim)
    enc = [
        _dense(k, a, b)
        for k, (a, b) in zip(jax.random.split(k_enc, len(enc_w) - 1), pairwise(enc_w), strict=True)
    ]
    dec = [
        _dense(k, a, b)
        for k, (a, b) in zip(jax.random.split(k_dec, len(dec_w) - 1), pairwise(dec_w), strict=True)
    ]
    if pixel_mean is not None:
        p = jnp.clip(jnp.asarray(pixel_mean, jnp.float32), 1e-3, 1 - 1e-3)
        dec[-1]["b"] = jnp.log(p) - jnp.log1p(-p)
    return {"encoder": enc, "decoder": dec, "prior": jnp.zeros(config.latents)}


def _mlp(layers: list[dict[str, jax.Array]], h: jax.Array, slope: float) -> jax.Array:
    for i, layer in enumerate(layers):
        h = h @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            h = jax.nn.leaky_relu(h, slope)
    return h


def encode(params: PyTree, x: jax.Array, config: VAEConfig) -> jax.Array:
    """Logits of ``q_φ(b | x)``, shape ``(L,)`` for one image ``x`` of shape ``(D,)``."""
    return _mlp(params["encoder"], 2.0 * x - 1.0, config.slope)


def _bernoulli_log_pmf(logits: jax.Array, b: jax.Array) -> jax.Array:
    # log σ(l)^b (1 − σ(l))^(1−b) = b·l − softplus(l); also defined for relaxed b in (0, 1)
    return jnp.sum(b * logits - jax.nn.softplus(logits), axis=-1)


def log_joint(params: PyTree, x: jax.Array, b: jax.Array, config: VAEConfig) -> jax.Array:
    """``log p_θ(x | b) + log p_θ(b)`` for one image and one latent vector (scalar)."""
    x_logits = _mlp(params["decoder"], 2.0 * b - 1.0, config.slope)
    return _bernoulli_log_pmf(x_logits, x) + _bernoulli_log_pmf(params["prior"], b)


def _log_weight(params: PyTree, x: jax.Array, b: jax.Array, config: VAEConfig) -> jax.Array:
    """``log p_θ(x, b) − log q_φ(b | x)``: the ELBO's integrand."""
    return log_joint(params, x, b, config) - _bernoulli_log_pmf(encode(params, x, config), b)


def _posterior(params: PyTree, x: jax.Array, config: VAEConfig) -> dist.Distribution:
    return dist.Bernoulli(logits=encode(params, x, config)).to_event(1)


def elbo(params: PyTree, x: jax.Array, key: jax.Array, config: VAEConfig, k: int = 1) -> jax.Array:
    """Monte Carlo ELBO of one image with ``k`` exact samples of ``q`` (no gradient intended)."""
    logits = encode(params, x, config)
    b = jax.random.bernoulli(key, jax.nn.sigmoid(logits), (k, config.latents)).astype(x.dtype)
    return jnp.mean(jax.vmap(lambda bj: _log_weight(params, x, bj, config))(b))


def importance_weighted_bound(
    params: PyTree, x: jax.Array, key: jax.Array, config: VAEConfig, k: int = 100
) -> jax.Array:
    """The ``k``-sample importance-weighted bound ``log (1/k) Σ_j p(x, b_j) / q(b_j | x)``."""
    logits = encode(params, x, config)
    b = jax.random.bernoulli(key, jax.nn.sigmoid(logits), (k, config.latents)).astype(x.dtype)
    logw = jax.vmap(lambda bj: _log_weight(params, x, bj, config))(b)
    return jax.nn.logsumexp(logw) - jnp.log(k)


#: The largest ``--latents`` for which the joint of all ``2^L`` latent configurations is
#: enumerated as one Categorical (needed by ``unordered-set``).
MAX_JOINT_LATENTS = 16


def _configurations(latents: int) -> jax.Array:
    """All ``2^L`` binary vectors, shape ``(2^L, L)``; row ``i`` is the binary expansion of i."""
    bits = (np.arange(2**latents)[:, None] >> np.arange(latents - 1, -1, -1)[None, :]) & 1
    return jnp.asarray(bits, dtype=jnp.float32)


def _joint_posterior(params: PyTree, x: jax.Array, config: VAEConfig, bs: jax.Array) -> Any:
    """``q_φ(b | x)`` as one Categorical over the rows of ``bs`` (all configurations)."""
    return dist.Categorical(logits=_bernoulli_log_pmf(encode(params, x, config), bs))


def needs_joint(estimator: ex.Estimator) -> bool:
    """Whether the estimator samples one Categorical (without replacement), not Bernoullis."""
    return type(estimator).__name__ in ("UnorderedSet", "SumAndSample")


def make_loss(
    estimator: ex.Estimator, config: VAEConfig, num_samples: int
) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """``loss(params, batch, key)``: minus the mean over the batch of each image's objective.

    Each image's objective is ``expectax.expectation(f, q(·|x), estimator=..., num_samples=...)``
    with ``f(params, b) = log p(x, b) − log q(b | x)`` and ``q(·|x)`` the Bernoulli posterior
    (``Bernoulli(logits=enc(x)).to_event(1)``), so ``jax.grad(loss)`` is the estimator's
    gradient. Per estimator:

    - VIMCO returns the ``K``-sample importance-weighted bound for the log-weight f (the
      objective VIMCO trains), ``K = num_samples``; the others return the ELBO estimate.
    - UnorderedSet samples without replacement from one Categorical, so ``q(·|x)`` becomes the
      Categorical over all ``2^L`` configurations (f decodes the index into bits); it needs
      ``L ≤ MAX_JOINT_LATENTS``.
    """
    joint = needs_joint(estimator)
    if joint and config.latents > MAX_JOINT_LATENTS:
        raise ValueError(
            f"--estimator {type(estimator).__name__}: sampling without replacement needs the "
            f"joint of all 2^L latent configurations as one Categorical, so --latents must be "
            f"at most {MAX_JOINT_LATENTS}; got {config.latents}. Use --latents 10, or "
            "--estimator disarm / rloo for more latents."
        )
    bs = _configurations(config.latents) if joint else None

    def per_image(params: PyTree, x: jax.Array, key: jax.Array) -> jax.Array:
        if joint:
            f = lambda p, i: _log_weight(p, x, bs[i], config)
            dist_fn = lambda p: _joint_posterior(p, x, config, bs)
        else:
            f = lambda p, b: _log_weight(p, x, b, config)
            dist_fn = lambda p: _posterior(p, x, config)
        E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=num_samples)
        return E(params, key)

    def loss(params: PyTree, batch: jax.Array, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, batch.shape[0])
        return -jnp.mean(jax.vmap(per_image, in_axes=(None, 0, 0))(params, batch, keys))

    return loss


# --------------------------------------------------------------------------- training


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
    fn: Callable[[jax.Array, jax.Array], jax.Array], xs: jax.Array, key: jax.Array, chunk: int = 100
) -> jax.Array:
    """``fn(x, key_x)`` for each row of ``xs``, ``chunk`` rows at a time: shape ``(n,)``."""
    n = xs.shape[0]
    pad = (-n) % chunk
    xs_p = jnp.concatenate([xs, jnp.zeros((pad, xs.shape[1]), xs.dtype)])
    keys = jax.random.split(key, n + pad)
    vals = jax.lax.map(
        lambda a: jax.vmap(fn)(*a),
        (xs_p.reshape(-1, chunk, xs.shape[1]), keys.reshape(-1, chunk)),
    ).reshape(-1)
    return vals[:n]


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
    eval_points: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> tuple[Curve, dict[str, Any]]:
    """Train one VAE with one estimator; return its learning curve and a summary row."""
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
    train_eval = train_x[:eval_points]
    test_eval = jnp.asarray(data.test[:eval_points])
    var_batch = train_x[:batch_size]

    def loss(params: PyTree, batch: jax.Array, key: jax.Array, est: Any) -> jax.Array:
        return make_loss(est, config, num_samples)(params, batch, key)

    def step(state: _State, key: jax.Array) -> tuple[_State, None]:
        k_batch, k_grad = jax.random.split(key)
        batch = train_x[jax.random.randint(k_batch, (batch_size,), 0, train_x.shape[0])]
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
    def run_steps(state: _State, keys: jax.Array) -> _State:
        return jax.lax.scan(step, state, keys)[0]

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
    while True:
        if done % eval_every == 0 or done == steps:
            stats = evaluate(state.params, state.estimator, jax.random.fold_in(k_eval, done))
            rows.append((done, *(float(a) for a in stats), time.perf_counter() - start))
        if done == steps:
            break
        n = min(chunk, steps - done)
        keys = jax.random.split(jax.random.fold_in(k_train, done), n)
        state = run_steps(state, keys)
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


# --------------------------------------------------------------------------- output


def _write_curve(path: str, curve: Curve) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", *Curve._fields[1:]])
        for row in zip(*curve, strict=True):
            w.writerow([int(row[0]), *(f"{v:.6g}" for v in row[1:])])


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["estimator"] for r in rows):
        mine = [r for r in rows if r["estimator"] == name]
        entry: dict[str, Any] = {
            "estimator": name,
            "seeds": len(mine),
            "num_samples": mine[0]["num_samples"],
            "evaluations": mine[0]["evaluations"],
            "steps": mine[0]["steps"],
        }
        for col in ("train_elbo", "test_iw"):
            entry[col], entry[col + "_se"] = _mean_se([r[col] for r in mine])
        entry["log10_grad_var"], entry["log10_grad_var_se"] = _mean_se(
            [np.log10(r["grad_var"]) for r in mine]
        )
        entry["seconds"] = float(np.mean([r["seconds"] for r in mine]))
        out.append(entry)
    return out


def summary_markdown(rows: list[dict[str, Any]], iw_samples: int = 100) -> str:
    """The summary as a Markdown table (the one in docs/vae.md), mean ± s.e. over seeds."""

    def fmt(mean: float, se: float) -> str:
        return f"{mean:.2f} ± {se:.2f}" if np.isfinite(se) else f"{mean:.2f}"

    lines = [
        f"| estimator | f evals / image / step | seeds | train ELBO | held-out IW bound "
        f"(k = {iw_samples}) | log10 encoder grad. variance | s / run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['estimator']} | {r['evaluations']} | {r['seeds']} | "
            f"{fmt(float(r['train_elbo']), float(r['train_elbo_se']))} | "
            f"{fmt(float(r['test_iw']), float(r['test_iw_se']))} | "
            f"{fmt(float(r['log10_grad_var']), float(r['log10_grad_var_se']))} | "
            f"{float(r['seconds']):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _write_rows(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _plot(path: str, curves: dict[str, list[Curve]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        ("train_elbo", "training ELBO (nats)", False),
        ("test_iw", "held-out IW bound, k = 100 (nats)", False),
        ("grad_var", "encoder gradient variance", True),
    ]
    for ax, (field, label, log) in zip(axes, panels, strict=True):
        for name, runs in curves.items():
            step = runs[0].step
            ys = np.stack([getattr(c, field) for c in runs])
            ys = np.log10(ys) if log else ys
            mean = ys.mean(axis=0)
            (line,) = ax.plot(step, mean, label=name)
            if len(runs) > 1:
                se = ys.std(axis=0, ddof=1) / np.sqrt(len(runs))
                ax.fill_between(step, mean - se, mean + se, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(("log10 " if log else "") + label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``expectax vae`` flags to ``parser``."""
    parser.description = (
        "Train a VAE with Bernoulli latents (the DisARM paper's linear or nonlinear model) on "
        "binarised images with one or more gradient estimators; write learning curves (CSV), "
        "a summary with mean ± s.e. over seeds, and comparison plots."
    )
    parser.add_argument(
        "--estimator",
        nargs="+",
        default=["rloo"],
        metavar="NAME",
        help=f"one or more of {', '.join(ESTIMATORS)}, or 'all' (default: rloo)",
    )
    parser.add_argument(
        "--model",
        choices=["linear", "nonlinear"],
        default="linear",
        help="linear: affine encoder/decoder; nonlinear: 2×200 LeakyReLU(0.3)",
    )
    parser.add_argument("--latents", type=int, default=32, help="Bernoulli latents (default 32)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds")
    parser.add_argument("--out", default="vae_runs", help="output directory (default vae_runs)")
    parser.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="local .npz with x_train and x_test (e.g. Keras' mnist.npz); "
        "default: scikit-learn's 8×8 digits",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="binarisation threshold")
    parser.add_argument("--batch-size", type=int, default=50, help="minibatch (default 50)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument(
        "--evaluations",
        type=int,
        default=2,
        help="evaluations of f per image per step; ARM/DisARM get pairs "
        "(default 2: one pair, or 2 samples for RLOO)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.5,
        help="temperature of gumbel-softmax and st (default 0.5)",
    )
    parser.add_argument(
        "--cv-lr",
        type=float,
        default=1e-2,
        help="Adam step size of REBAR/RELAX's control-variate parameters (default 0.01)",
    )
    parser.add_argument("--eval-every", type=int, default=250, help="steps between evaluations")
    parser.add_argument(
        "--var-repeats",
        type=int,
        default=16,
        help="gradient estimates on a fixed batch for the variance (default 16)",
    )
    parser.add_argument("--iw-samples", type=int, default=100, help="k of the IW bound (100)")
    parser.add_argument(
        "--eval-points",
        type=int,
        default=1000,
        help="images used for the ELBO and IW bound at each evaluation",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")
    return parser


def _check_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Validate the flags before any training; return the estimators to run and notes."""
    for flag, value, low in [
        ("--latents", args.latents, 1),
        ("--steps", args.steps, 1),
        ("--batch-size", args.batch_size, 1),
        ("--evaluations", args.evaluations, 1),
        ("--eval-every", args.eval_every, 1),
        ("--var-repeats", args.var_repeats, 2),
        ("--iw-samples", args.iw_samples, 1),
        ("--eval-points", args.eval_points, 1),
    ]:
        if value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}.")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be positive, got {args.temperature}.")
    notes = []
    if "all" in args.estimator:
        names = available_estimators()
        missing = [n for n in ESTIMATORS if n not in names]
        if missing:
            notes.append(f"not available in this install, skipped: {', '.join(missing)}")
        if "unordered-set" in names and args.latents > MAX_JOINT_LATENTS:
            names.remove("unordered-set")
            notes.append(
                f"unordered-set skipped: it enumerates all 2^L configurations and needs "
                f"--latents ≤ {MAX_JOINT_LATENTS}"
            )
        return names, notes
    names = list(dict.fromkeys(args.estimator))
    for name in names:
        _load(name)  # clear errors before any training
    if "unordered-set" in names and args.latents > MAX_JOINT_LATENTS:
        raise ValueError(
            f"--estimator unordered-set samples without replacement from the joint of all "
            f"2^L latent configurations, so --latents must be at most {MAX_JOINT_LATENTS}; "
            f"got {args.latents}. Use e.g. --latents 10, or drop unordered-set."
        )
    return names, notes


def run(args: argparse.Namespace) -> int:
    """Run ``expectax vae`` with parsed arguments; returns the exit code.

    Bad flags or data raise ``SystemExit`` with a message naming the flag and the fix.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    console = Console(quiet=args.quiet)
    try:  # bad flags or data: a one-line message and exit status 1, no traceback
        names, notes = _check_args(args)
        if args.data is None:
            data = load_digits(args.threshold)
        else:
            data = load_npz(args.data, args.threshold)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"expectax vae: error: {err}") from err
    os.makedirs(args.out, exist_ok=True)
    console.print(
        f"[bold]expectax vae[/]: {data.name} ({data.train.shape[0]} train / {data.test.shape[0]} "
        f"held out, {data.train.shape[1]} pixels), {args.model} model, {args.latents} latents, "
        f"{args.steps} steps, seeds {args.seed}"
    )
    for note in notes:
        console.print(f"[yellow]note[/]: {note}")
    curves: dict[str, list[Curve]] = {}
    rows: list[dict[str, Any]] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=args.quiet) as bar:
        for name in names:
            for seed in args.seed:
                task = bar.add_task(f"{name:>14} seed {seed}", total=args.steps)
                curve, summary = train(
                    name,
                    data,
                    seed=seed,
                    steps=args.steps,
                    latents=args.latents,
                    model=args.model,
                    batch_size=args.batch_size,
                    learning_rate=args.lr,
                    evaluations=args.evaluations,
                    temperature=args.temperature,
                    cv_learning_rate=args.cv_lr,
                    eval_every=args.eval_every,
                    var_repeats=args.var_repeats,
                    iw_samples=args.iw_samples,
                    eval_points=args.eval_points,
                    progress=lambda n, task=task: bar.advance(task, n),
                )
                _write_curve(os.path.join(args.out, f"{name}_seed{seed}.csv"), curve)
                curves.setdefault(name, []).append(curve)
                rows.append(summary)
    _write_rows(os.path.join(args.out, "runs.csv"), rows)
    table_rows = _summarise(rows)
    _write_rows(os.path.join(args.out, "summary.csv"), table_rows)
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write(summary_markdown(table_rows, iw_samples=args.iw_samples))
    title = f"VAE on {data.name}: {args.model}, {args.latents} latents, {args.evaluations} evals"
    _plot(os.path.join(args.out, "vae_curves.png"), curves, title)

    table = Table(title=f"final values after {args.steps} steps (mean ± s.e. over seeds)")
    for col in ("estimator", "evals", "train ELBO", "test IW k=100", "log10 grad var", "s/run"):
        table.add_column(col, justify="left" if col == "estimator" else "right")
    for r in table_rows:
        fmt = lambda m, s: f"{m:.2f} ± {s:.2f}" if np.isfinite(s) else f"{m:.2f}"
        table.add_row(
            r["estimator"],
            str(r["evaluations"]),
            fmt(r["train_elbo"], r["train_elbo_se"]),
            fmt(r["test_iw"], r["test_iw_se"]),
            fmt(r["log10_grad_var"], r["log10_grad_var_se"]),
            f"{r['seconds']:.0f}",
        )
    console.print(table)
    console.print(
        f"wrote {args.out}/summary.csv, runs.csv, <estimator>_seed<k>.csv, vae_curves.png"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m expectax.vi.vae``: the same as ``expectax vae``."""
    parser = configure_parser(argparse.ArgumentParser(prog="expectax vae"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
