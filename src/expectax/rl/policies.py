"""Policies: a params pytree plus an apply function that returns a distribution over actions.

A :class:`Policy` is ``init(key) -> params`` and ``apply(params, obs) -> distribution`` for one
unbatched observation; the distribution is a numpyro distribution (``sample``, ``log_prob``,
``entropy``). Any pair of functions of that shape is a policy: the trainer needs nothing else.

- :func:`softmax_policy`: a categorical over ``K`` discrete actions, logits from an MLP.
- :func:`bernoulli_policy`: two actions, ``P(a = 1) = σ(z)``; the same distribution (and the
  same gradient) as the two-class softmax with logits ``(0, z)``, with one output instead of two.
- :func:`gaussian_policy`: a diagonal Gaussian for continuous actions, state-independent
  learned log standard deviations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

__all__ = [
    "Policy",
    "bernoulli_policy",
    "gaussian_policy",
    "mlp_apply",
    "mlp_init",
    "policy_for_space",
    "softmax_policy",
]

Params = Any


@dataclasses.dataclass(frozen=True)
class Policy:
    """A policy: ``init(key) -> params`` and ``apply(params, obs) -> distribution over actions``.

    Attributes:
      init: builds the initial parameter pytree from a ``jax.random`` key.
      apply: maps params and one observation to a numpyro distribution over one action.
      kind: a label (``"softmax"``, ``"bernoulli"``, ``"gaussian"``) used in messages.
    """

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], Any]
    kind: str = "custom"


def mlp_init(
    key: jax.Array, sizes: Sequence[int], final_scale: float = 0.01, input_gain: float = 1.0
) -> list[dict[str, jax.Array]]:
    """Parameters of an MLP with layer sizes ``sizes`` (input first), LeCun-normal weights.

    The last layer's weights are scaled by ``final_scale`` so a new policy starts near uniform;
    the first hidden layer's by ``input_gain`` (larger: the tanh units respond to smaller
    changes of the observation).
    """
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        w = jax.random.normal(k, (n_in, n_out)) / math.sqrt(n_in)
        if i == len(sizes) - 2:
            w = w * final_scale
        elif i == 0:
            w = w * input_gain
        params.append({"w": w, "b": jnp.zeros((n_out,))})
    return params


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Apply an MLP (tanh hidden layers, linear output) to one input vector."""
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def _check_obs_dim(obs_dim: int, fn: str) -> None:
    if not isinstance(obs_dim, int) or obs_dim < 1:
        raise ValueError(f"{fn}: obs_dim must be a positive int, got {obs_dim!r}.")


def softmax_policy(
    obs_dim: int, num_actions: int, hidden: Sequence[int] = (32,), input_gain: float = 1.0
) -> Policy:
    """A categorical policy ``π(a|s) = softmax(MLP(s))_a`` over ``num_actions`` actions.

    ``input_gain`` scales the first layer's initial weights (see :func:`mlp_init`).
    """
    _check_obs_dim(obs_dim, "softmax_policy")
    if num_actions < 2:
        raise ValueError(f"softmax_policy: num_actions must be ≥ 2, got {num_actions}.")
    sizes = (obs_dim, *hidden, num_actions)
    return Policy(
        init=lambda key: mlp_init(key, sizes, input_gain=input_gain),
        apply=lambda params, obs: dist.CategoricalLogits(mlp_apply(params, obs)),
        kind="softmax",
    )


def bernoulli_policy(
    obs_dim: int, hidden: Sequence[int] = (32,), input_gain: float = 1.0
) -> Policy:
    """A two-action policy ``P(a = 1 | s) = σ(MLP(s))`` with a single output.

    Equal in distribution and in gradient to the two-class softmax with logits ``(0, z)``:
    ``softmax(0, z)_1 = e^z / (1 + e^z) = σ(z)``.
    """
    _check_obs_dim(obs_dim, "bernoulli_policy")
    sizes = (obs_dim, *hidden, 1)
    return Policy(
        init=lambda key: mlp_init(key, sizes, input_gain=input_gain),
        apply=lambda params, obs: dist.BernoulliLogits(mlp_apply(params, obs)[0]),
        kind="bernoulli",
    )


def gaussian_policy(
    obs_dim: int,
    action_dim: int,
    hidden: Sequence[int] = (32,),
    init_log_std: float = 0.0,
    action_scale: float | jax.Array = 1.0,
    input_gain: float = 1.0,
) -> Policy:
    """A diagonal Gaussian ``N(μ(s), diag σ²)``: mean from an MLP, learned log-std per dimension.

    Args:
      obs_dim: observation size.
      action_dim: action size.
      hidden: hidden layer sizes.
      init_log_std: initial ``log σ`` (in units of ``action_scale``).
      action_scale: the mean and standard deviation are multiplied by this (e.g. the action
        bound, 2 for Pendulum), so the network works in units of order 1.
      input_gain: scales the first layer's initial weights (see :func:`mlp_init`).
    """
    _check_obs_dim(obs_dim, "gaussian_policy")
    sizes = (obs_dim, *hidden, action_dim)
    scale = jnp.asarray(action_scale, jnp.float32)

    def init(key):
        return {
            "mean": mlp_init(key, sizes, input_gain=input_gain),
            "log_std": jnp.full((action_dim,), init_log_std, jnp.float32),
        }

    def apply(params, obs):
        mean = mlp_apply(params["mean"], obs) * scale
        std = jnp.exp(params["log_std"]) * scale
        return dist.Normal(mean, std).to_event(1)

    return Policy(init=init, apply=apply, kind="gaussian")


def policy_for_space(
    kind: str,
    obs_space: Any,
    action_space: Any,
    hidden: Sequence[int] = (32,),
    input_gain: float = 1.0,
) -> Policy:
    """Build the policy ``kind`` (``"auto"``, ``"softmax"``, ``"bernoulli"``, ``"gaussian"``).

    ``"auto"`` picks softmax for ``Discrete`` and gaussian for ``Box`` action spaces. A policy
    that cannot serve the action space raises a ``ValueError`` that names one that can.
    """
    import gymnasium as gym

    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(
            f"observation space {obs_space} is not supported: the policies take a flat Box "
            "observation (a vector). Wrap the environment with "
            "gymnasium.wrappers.FlattenObservation."
        )
    obs_dim = int(obs_space.shape[0])
    discrete = isinstance(action_space, gym.spaces.Discrete)
    box = isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1
    if not (discrete or box):
        raise ValueError(
            f"action space {action_space} is not supported: use an environment with a Discrete "
            "action space (policy 'softmax', or 'bernoulli' for two actions) or a 1-D Box "
            "(policy 'gaussian')."
        )
    if kind == "auto":
        kind = "softmax" if discrete else "gaussian"
    if kind in ("softmax", "bernoulli") and not discrete:
        raise ValueError(
            f"policy {kind!r} needs a Discrete action space, but the environment's is "
            f"{action_space}: use --policy gaussian for continuous (Box) actions."
        )
    if kind == "bernoulli" and int(action_space.n) != 2:
        raise ValueError(
            f"policy 'bernoulli' serves exactly two actions, but the environment has "
            f"{int(action_space.n)}: use --policy softmax."
        )
    if kind == "gaussian" and not box:
        fits = "bernoulli' or 'softmax" if int(action_space.n) == 2 else "softmax"
        raise ValueError(
            f"policy 'gaussian' needs a continuous (Box) action space, but the environment's "
            f"is {action_space}: use --policy '{fits}'."
        )
    if kind == "softmax":
        return softmax_policy(obs_dim, int(action_space.n), hidden, input_gain)
    if kind == "bernoulli":
        return bernoulli_policy(obs_dim, hidden, input_gain)
    if kind == "gaussian":
        high = jnp.asarray(action_space.high, jnp.float32)
        scale = jnp.where(jnp.isfinite(high), high, 1.0)
        return gaussian_policy(
            obs_dim, int(action_space.shape[0]), hidden, action_scale=scale, input_gain=input_gain
        )
    raise ValueError(
        f"unknown policy {kind!r}: choose 'auto', 'softmax', 'bernoulli' or 'gaussian'."
    )
