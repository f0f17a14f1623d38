"""Policies: Bernoulli ≡ two-class softmax with logits (0, z); Gaussian; action-space checks."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectax import rl
from expectax.rl.policies import mlp_apply


def _as_softmax_params(bern_params):
    """Softmax MLP params whose logits are (0, z) where z is the Bernoulli MLP's output."""
    last = bern_params[-1]
    zero_w = jnp.zeros_like(last["w"])
    zero_b = jnp.zeros_like(last["b"])
    return [
        *bern_params[:-1],
        {"w": jnp.concatenate([zero_w, last["w"]], 1), "b": jnp.concatenate([zero_b, last["b"]])},
    ]


def test_bernoulli_equals_two_class_softmax_in_distribution_and_gradient():
    bern = rl.bernoulli_policy(3, hidden=(5,))
    soft = rl.softmax_policy(3, 2, hidden=(5,))
    params = bern.init(jax.random.key(0))
    params = jax.tree_util.tree_map(lambda x: x * 50.0, params)  # not near-uniform
    obs = jax.random.normal(jax.random.key(1), (3, 3))
    for o in obs:
        for a in (0, 1):
            lp_b = bern.apply(params, o).log_prob(a)
            lp_s = soft.apply(_as_softmax_params(params), o).log_prob(a)
            np.testing.assert_allclose(lp_b, lp_s, rtol=1e-5, atol=1e-6)
            g_b = jax.grad(lambda p, o=o, a=a: bern.apply(p, o).log_prob(a))(params)
            g_s = jax.grad(lambda p, o=o, a=a: soft.apply(_as_softmax_params(p), o).log_prob(a))(
                params
            )
            for x, y in zip(
                jax.tree_util.tree_leaves(g_b), jax.tree_util.tree_leaves(g_s), strict=True
            ):
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            bern.apply(params, o).entropy(),
            soft.apply(_as_softmax_params(params), o).entropy(),
            rtol=1e-5,
            atol=1e-6,
        )


def test_bernoulli_samples_have_probability_sigmoid_z():
    bern = rl.bernoulli_policy(2, hidden=(4,))
    params = jax.tree_util.tree_map(lambda x: x * 40.0, bern.init(jax.random.key(2)))
    o = jnp.array([0.3, -0.4])
    p = float(jax.nn.sigmoid(mlp_apply(params, o)[0]))
    n = 20000
    a = bern.apply(params, o).sample(jax.random.key(3), (n,))
    se = np.sqrt(p * (1 - p) / n)
    assert abs(float(a.mean()) - p) < 5 * se
    assert 0.05 < p < 0.95


def test_gaussian_policy_log_prob_and_scale():
    pol = rl.gaussian_policy(3, 2, hidden=(4,), init_log_std=-0.5, action_scale=2.0)
    params = pol.init(jax.random.key(0))
    o = jnp.array([0.1, 0.2, 0.3])
    d = pol.apply(params, o)
    mean = mlp_apply(params["mean"], o) * 2.0
    std = np.exp(-0.5) * 2.0
    a = jnp.array([0.3, -1.0])
    expected = np.sum(-0.5 * ((a - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(d.log_prob(a), expected, rtol=1e-5)
    assert d.sample(jax.random.key(1)).shape == (2,)


def test_policy_for_space_picks_and_refuses():
    box = gym.spaces.Box(-1, 1, (4,))
    assert rl.policy_for_space("auto", box, gym.spaces.Discrete(3)).kind == "softmax"
    assert rl.policy_for_space("auto", box, gym.spaces.Box(-2, 2, (1,))).kind == "gaussian"
    assert rl.policy_for_space("bernoulli", box, gym.spaces.Discrete(2)).kind == "bernoulli"
    with pytest.raises(ValueError, match="needs a Discrete action space.*--policy gaussian"):
        rl.policy_for_space("softmax", box, gym.spaces.Box(-2, 2, (1,)))
    with pytest.raises(ValueError, match="needs a continuous.*--policy 'bernoulli' or 'softmax'"):
        rl.policy_for_space("gaussian", box, gym.spaces.Discrete(2))
    with pytest.raises(ValueError, match="exactly two actions.*--policy softmax"):
        rl.policy_for_space("bernoulli", box, gym.spaces.Discrete(3))
    with pytest.raises(ValueError, match="action space .* is not supported"):
        rl.policy_for_space("auto", box, gym.spaces.MultiBinary(3))
