"""Sequence policy gradients (expectax.rl.sequence): values, errors, and bias measured exactly.

The statistical tests draw independent batches from the enumerable tiny autoregressive policy
(expectax.problems.sequence, V=3, L=3: 15 sequences, 21 parameters), take one gradient per
batch, and compare the mean with exact gradients by enumeration: unbiased means every
coordinate within 5 SE; "biased" means some coordinate beyond 5 SE (most are far beyond).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectax.problems.sequence import TinySequencePolicy, gradient_samples, surrogate_loss
from expectax.rl import sequence as seq

K = 4
NUM = 20_000


def max_z(samples, target):
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(len(samples))
    return float(np.max(np.abs(mean - target) / np.maximum(se, 1e-12)))


def perp(samples, direction):
    """Component of each sample orthogonal to ``direction`` (a fixed linear map)."""
    u = direction / np.linalg.norm(direction)
    return samples - np.outer(samples @ u, u)


# ---------------------------------------------------------------------------------------------
# Values and shapes


def test_advantage_values(strict_ranks):
    r = jnp.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    rloo = seq.rloo_advantages(r)
    np.testing.assert_allclose(rloo[0], [1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2], rtol=1e-6)
    dr = seq.dr_grpo_advantages(r)
    np.testing.assert_allclose(dr, 0.75 * rloo, rtol=1e-6, atol=1e-7)
    grpo = seq.grpo_advantages(r)
    np.testing.assert_allclose(grpo[0], dr[0] / (np.std(r[0], ddof=1) + 1e-4), rtol=1e-6)
    # a group with identical rewards has exactly zero advantages (no rounding residue)
    same = jnp.full((1, 5), 0.1)
    for fn in (seq.rloo_advantages, seq.dr_grpo_advantages, seq.grpo_advantages):
        assert np.all(np.asarray(fn(same)) == 0.0)
    pp = seq.reinforce_pp_advantages(r)
    np.testing.assert_allclose([np.mean(pp), np.std(pp)], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(
        seq.remax_advantages(r, jnp.array([2.0, 1.0])), r - jnp.array([[2.0], [1.0]])
    )
    np.testing.assert_allclose(seq.reinforce_advantages(r, 1.5), r - 1.5)


def test_numpy_in_numpy_out():
    r = np.array([[1.0, 2.0, 4.0]], np.float32)
    out = seq.rloo_advantages(r)
    assert type(out) is np.ndarray
    np.testing.assert_allclose(out, seq.rloo_advantages(jnp.asarray(r)), rtol=1e-6)
    lp = np.log(np.full((1, 3, 2), 0.5, np.float32))
    kl = seq.kl_estimate(lp, lp - 0.1, estimator="k3")
    assert type(kl) is np.ndarray and kl.shape == (1, 3, 2)
    assert type(seq.kl_penalized_rewards(r, lp, lp, beta=0.1)) is np.ndarray


def test_kl_estimators_values(strict_ranks):
    lp = jnp.log(jnp.array([[[0.5, 0.2]]]))
    ref = jnp.log(jnp.array([[[0.25, 0.4]]]))
    log_r = ref - lp
    np.testing.assert_allclose(seq.kl_estimate(lp, ref, estimator="k1"), -log_r, rtol=1e-6)
    np.testing.assert_allclose(seq.kl_estimate(lp, ref, estimator="k2"), 0.5 * log_r**2, rtol=1e-6)
    np.testing.assert_allclose(
        seq.kl_estimate(lp, ref, estimator="k3"), jnp.exp(log_r) - 1 - log_r, rtol=1e-6
    )
    np.testing.assert_allclose(
        seq.kl_estimate(lp, ref, estimator="k2", level="sequence"),
        0.5 * jnp.sum(log_r, -1) ** 2,
        rtol=1e-6,
    )


def test_aggregation_modes(strict_ranks):
    loss = jnp.array([[[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]])
    m = jnp.array([[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    agg = {mode: float(seq.aggregate_loss(loss, m, mode)) for mode in seq.LOSS_AGG_MODES}
    assert agg["seq-mean-token-sum"] == pytest.approx((6 + 4) / 2)
    assert agg["token-mean"] == pytest.approx(10 / 4)
    assert agg["seq-mean-token-mean"] == pytest.approx((2 + 4) / 2)
    assert agg["seq-mean-token-sum-norm"] == pytest.approx(5 / 3)
    assert float(seq.aggregate_loss(loss, m, "seq-mean-token-sum-norm", constant=10)) == 0.5


def test_policy_loss_gradient_and_ppo_ratio(strict_ranks):
    logp = jnp.log(jnp.array([[[0.5, 0.2], [0.9, 0.3]]]))
    adv = jnp.array([[2.0, -1.0]])
    m = jnp.array([[[1.0, 1.0], [1.0, 0.0]]])
    g = jax.grad(lambda lp: seq.sequence_policy_loss(lp, adv, m))(logp)
    np.testing.assert_allclose(g, -adv[..., None] * m / 2, rtol=1e-6)
    assert float(seq.sequence_policy_loss(logp, adv, m)) == pytest.approx(-(2 * 2 - 1) / 2)
    # first PPO step (old = current): the same gradient, clipped or not
    old = jax.lax.stop_gradient(logp)
    for clip in (None, 0.2):
        g_ppo = jax.grad(
            lambda lp, c=clip: seq.sequence_policy_loss(lp, adv, m, old_logp_gkt=old, clip_eps=c)
        )(logp)
        np.testing.assert_allclose(g_ppo, g, rtol=1e-6)
    # ratio beyond 1 + ε with a positive advantage, or below 1 − ε with a negative one: clipped
    shifted = old + jnp.array([[[0.5, 0.5], [-0.5, -0.5]]])
    g_clip = jax.grad(
        lambda lp: seq.sequence_policy_loss(lp, adv, m, old_logp_gkt=old, clip_eps=0.2)
    )(shifted)
    np.testing.assert_allclose(g_clip, 0.0)
    # DAPO clip-higher lets the positive-advantage ratio through up to 1 + ε_hi
    g_hi = jax.grad(
        lambda lp: seq.sequence_policy_loss(
            lp, adv, m, old_logp_gkt=old, clip_eps=0.2, clip_eps_high=1.0
        )
    )(shifted)
    assert np.all(np.asarray(g_hi[0, 0]) < 0)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"rloo_advantages: rewards_gk has K=1 .* K ≥ 2"):
        seq.rloo_advantages(jnp.ones((3, 1)))
    with pytest.raises(ValueError, match=r"grpo_advantages: rewards_gk must have rank 2"):
        seq.grpo_advantages(jnp.ones(4))
    with pytest.raises(ValueError, match=r"non-finite entry .* index \(0, 1\)"):
        seq.rloo_advantages(jnp.array([[1.0, jnp.nan]]))
    with pytest.raises(ValueError, match=r"mask_gkt has shape \(1, 2, 2\) but logp_gkt"):
        seq.sequence_policy_loss(-jnp.ones((1, 2, 3)), jnp.ones((1, 2)), jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match=r"advantages has shape \(1, 3\)"):
        seq.sequence_policy_loss(-jnp.ones((1, 2, 3)), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"mask_gkt leaves sequence \(group 0, completion 1\)"):
        seq.aggregate_loss(
            jnp.ones((1, 2, 2)), jnp.array([[[1.0, 1.0], [0.0, 0.0]]]), "seq-mean-token-mean"
        )
    with pytest.raises(ValueError, match=r"logp_gkt must hold log-probabilities .* not the logits"):
        seq.sequence_policy_loss(jnp.full((1, 2, 3), 2.5), jnp.ones((1, 2)))
    with pytest.raises(ValueError, match=r"ref_logp_gkt has shape \(1, 2, 2\)"):
        seq.kl_estimate(-jnp.ones((1, 2, 3)), -jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match=r"estimator must be 'k1', 'k2' or 'k3'"):
        seq.kl_estimate(-jnp.ones((1, 2, 3)), -jnp.ones((1, 2, 3)), estimator="k4")
    with pytest.raises(ValueError, match=r"loss_agg_mode must be one of"):
        seq.aggregate_loss(jnp.ones((1, 2, 3)), None, "mean")
    with pytest.raises(ValueError, match=r"greedy_rewards_g has shape \(3,\)"):
        seq.remax_advantages(jnp.ones((2, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match=r"baseline must be a scalar or \(G,\)"):
        seq.reinforce_advantages(jnp.ones((2, 4)), jnp.ones((2, 4)))


# ---------------------------------------------------------------------------------------------
# Exact expectations by enumeration (no sampling): the KL estimators' values and loss gradients


@pytest.fixture(scope="module")
def policy():
    pol = TinySequencePolicy()
    return pol, pol.init_params(), pol.init_params("reference")


def _expected_kl_term(pol, theta, theta_ref, estimator, level="token"):
    """E_π[Σ_t k] with π's probabilities held fixed: its gradient is E_π[∇ loss term]."""
    tl = pol.token_logp(theta)[None]
    ref = pol.token_logp(theta_ref)[None]
    k = seq.kl_estimate(tl, ref, jnp.asarray(pol.mask)[None], estimator=estimator, level=level)
    k = k[0] if level == "sequence" else jnp.sum(k[0], -1)
    p = jax.lax.stop_gradient(jnp.exp(pol.seq_logp(theta)))
    return jnp.sum(p * k)


def test_kl_values_and_loss_gradients_exactly(policy):
    pol, th, thr = policy
    exact = pol.exact_values(th, thr)
    grads = pol.exact_grads(th, thr)
    kl = float(exact["kl"])
    assert float(_expected_kl_term(pol, th, thr, "k1")) == pytest.approx(kl, rel=1e-5)
    assert float(_expected_kl_term(pol, th, thr, "k3")) == pytest.approx(kl, rel=1e-5)
    assert float(_expected_kl_term(pol, th, thr, "k2")) != pytest.approx(kl, rel=0.05)

    def grad_of(est, level="token"):
        return jax.grad(lambda t: _expected_kl_term(pol, t, thr, est, level))(th)

    np.testing.assert_allclose(grad_of("k1"), 0.0, atol=1e-6)  # k1 as a loss: no gradient
    np.testing.assert_allclose(grad_of("k2", "sequence"), grads["kl"], rtol=1e-4, atol=1e-6)
    assert np.max(np.abs(grad_of("k2") - grads["kl"])) > 0.01  # per-token k2: biased
    assert np.max(np.abs(grad_of("k3") - grads["kl"])) > 0.01  # k3 loss: not ∇KL(π‖π_ref)
    assert np.max(np.abs(grad_of("k3") - grads["forward_kl"])) > 0.01  # nor ∇KL(π_ref‖π)
    # ... but at length 1 the k3 loss is exactly the gradient of the forward KL(π_ref‖π)
    one = TinySequencePolicy(length=1)
    t1, r1 = one.init_params(), one.init_params("reference")
    g3 = jax.grad(lambda t: _expected_kl_term(one, t, r1, "k3"))(t1)
    np.testing.assert_allclose(g3, one.exact_grads(t1, r1)["forward_kl"], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bias of the advantage estimators and aggregations for ∇E[R], by sampling

REWARD_VARIANTS = {
    "reinforce": dict(advantage="reinforce"),
    "reinforce-const": dict(advantage="reinforce", baseline=0.5),
    "rloo": dict(advantage="rloo"),
    "remax": dict(advantage="remax"),
    "dr-grpo": dict(advantage="dr-grpo"),
    "grpo": dict(advantage="grpo"),
    "rloo-norm": dict(advantage="rloo", loss_agg_mode="seq-mean-token-sum-norm"),
    "rloo-token-mean": dict(advantage="rloo", loss_agg_mode="token-mean"),
    "reinforce-seq-mean-token-mean": dict(
        advantage="reinforce", loss_agg_mode="seq-mean-token-mean"
    ),
    "rloo-seq-mean-token-mean": dict(advantage="rloo", loss_agg_mode="seq-mean-token-mean"),
}


@pytest.fixture(scope="module")
def reward_samples(policy):
    pol, th, thr = policy
    s = gradient_samples(
        pol, th, thr, jax.random.key(11), NUM, 1, K, variants=list(REWARD_VARIANTS.values())
    )
    exact = {k: np.asarray(v).reshape(-1) for k, v in pol.exact_grads(th, thr).items()}
    return dict(zip(REWARD_VARIANTS, s, strict=True)), exact


@pytest.mark.parametrize("name", ["reinforce", "reinforce-const", "rloo", "remax"])
def test_unbiased_for_the_expected_reward(reward_samples, name):
    samples, exact = reward_samples
    assert max_z(samples[name], exact["reward"]) < 5


def test_dr_grpo_is_unbiased_for_a_known_multiple(reward_samples):
    samples, exact = reward_samples
    assert max_z(samples["dr-grpo"], (K - 1) / K * exact["reward"]) < 5
    assert max_z(samples["dr-grpo"], exact["reward"]) > 5
    # Dr. GRPO's constant: unbiased for ∇E[R] / C with C = T = 3
    assert max_z(samples["rloo-norm"], exact["reward"] / 3) < 5


def test_grpo_std_normalisation_biases_the_direction(reward_samples):
    samples, exact = reward_samples
    g = exact["reward"]
    assert max_z(samples["grpo"], g) > 5
    # not only a scale: the component orthogonal to ∇E[R] is significantly non-zero
    assert max_z(perp(samples["grpo"], g), 0.0) > 5
    assert max_z(perp(samples["dr-grpo"], g), 0.0) < 5  # whereas Dr. GRPO's is not


def test_length_normalisations_are_biased(reward_samples):
    samples, exact = reward_samples
    g = exact["reward"]
    for name in ("rloo-token-mean", "rloo-seq-mean-token-mean"):
        assert max_z(samples[name], g) > 5, name
        assert max_z(perp(samples[name], g), 0.0) > 5, name
    # per-sequence length normalisation with a constant baseline b = 0 follows ∇E[R/|y|] ...
    assert max_z(samples["reinforce-seq-mean-token-mean"], exact["reward_over_length"]) < 5
    # ... but with RLOO's sample-dependent baseline it follows neither
    assert max_z(samples["rloo-seq-mean-token-mean"], exact["reward_over_length"]) > 5


# ---------------------------------------------------------------------------------------------
# KL to the reference, as a reward penalty or a loss term, by sampling (reward 0: only the KL)

KL_VARIANTS = {
    "k1-reward": dict(advantage="rloo", kl="k1-reward", beta=1.0),
    "k3-reward": dict(advantage="rloo", kl="k3-reward", beta=1.0),
    "k1-loss": dict(advantage="rloo", kl="k1-loss", beta=1.0),
    "k2-loss": dict(advantage="rloo", kl="k2-loss", beta=1.0),
    "k2-seq-loss": dict(advantage="rloo", kl="k2-seq-loss", beta=1.0),
    "k3-loss": dict(advantage="rloo", kl="k3-loss", beta=1.0),
}


@pytest.fixture(scope="module")
def kl_samples():
    pol = TinySequencePolicy(reward_scale=0.0)
    th, thr = pol.init_params(), pol.init_params("reference")
    s = gradient_samples(
        pol, th, thr, jax.random.key(12), NUM, 1, K, variants=list(KL_VARIANTS.values())
    )
    grad_kl = np.asarray(pol.exact_grads(th, thr)["kl"]).reshape(-1)
    return dict(zip(KL_VARIANTS, s, strict=True)), grad_kl


def test_kl_reward_penalty_k1_is_unbiased_k3_is_not(kl_samples):
    samples, grad_kl = kl_samples
    assert max_z(samples["k1-reward"], -grad_kl) < 5
    assert max_z(samples["k3-reward"], -grad_kl) > 5


def test_kl_loss_terms(kl_samples):
    samples, grad_kl = kl_samples
    assert max_z(samples["k1-loss"], 0.0) < 5  # k1 as a loss: zero gradient in expectation
    assert max_z(samples["k1-loss"], -grad_kl) > 5
    assert max_z(samples["k2-seq-loss"], -grad_kl) < 5  # sequence-level k2: unbiased ∇KL
    assert max_z(samples["k2-loss"], -grad_kl) > 5
    assert max_z(samples["k3-loss"], -grad_kl) > 5


def test_surrogate_loss_rejects_unknown_variant(policy):
    pol, th, thr = policy
    idx = jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(ValueError, match="unknown advantage 'ppo'"):
        surrogate_loss(pol, th, thr, idx, advantage="ppo")


def test_later_ppo_steps_with_per_token_ratios_are_biased(policy):
    """Sampled from π_old, the gradient at θ ≠ θ_old: per-token ratios are not the sequence
    importance weight, so even unclipped the estimate is biased for ∇E_θ[R] (θ_old = θ: exact)."""
    pol, th_old, thr = policy
    g0 = np.asarray(pol.exact_grads(th_old, thr)["reward"])
    th = th_old + 0.5 * g0 / np.linalg.norm(g0)
    target = np.asarray(pol.exact_grads(th, thr)["reward"]).reshape(-1)
    s = gradient_samples(
        pol, th, thr, jax.random.key(13), 10_000, 2, K, theta_old=th_old, advantage="rloo"
    )
    assert max_z(s, target) > 5


def test_surrogate_loss_refuses_a_correction_vespo_would_ignore(policy):
    pol, th, thr = policy
    idx = jnp.zeros((1, 2), jnp.int32)
    with pytest.raises(ValueError, match="correction='token-truncate' would be ignored"):
        surrogate_loss(
            pol, th, thr, idx, loss="vespo", correction="token-truncate", theta_behaviour=th
        )
