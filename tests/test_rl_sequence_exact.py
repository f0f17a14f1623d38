"""Claims of docs/sequence-policy-gradients.md checked exactly by enumeration (issue 19, item 6).

``exact_gradient_moments`` sums every batch of the tiny policy (15 sequences; 15^K batches of
one group) weighted by its probability, so each expected gradient below is exact up to float
rounding: the comparisons are to float tolerance, not to a standard error.
"""

import itertools
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from expectax.problems.sequence import TinySequencePolicy, exact_gradient_moments
from expectax.rl import sequence as seq


def _grads(pol, key):
    th, thr = pol.init_params(), pol.init_params("reference")
    return th, thr, np.asarray(pol.exact_grads(th, thr)[key]).ravel()


def test_enumeration_reproduces_the_unbiased_estimators_exactly():
    pol = TinySequencePolicy()
    th, thr, g = _grads(pol, "reward")
    out = exact_gradient_moments(
        pol, th, thr, 2, variants=[dict(advantage="rloo"), dict(advantage="dr-grpo")]
    )
    np.testing.assert_allclose(out["mean"][0], g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["mean"][1], g / 2, rtol=1e-5, atol=1e-7)  # (K−1)/K
    assert out["var"][0] > 0


@pytest.mark.parametrize("ddof", [0, 1])
def test_grpo_k2_binary_rewards_is_rloo_times_a_constant(ddof):
    """K = 2, rewards in {0, 1}: |R_1 − R_2| ∈ {0, 1}, so GRPO's advantages are RLOO's divided
    by std + ε with std = 1/2 (ddof 0) or 1/√2 (ddof 1) whenever they are not zero."""
    r = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    eps = 1e-4
    factor = 1.0 / (1.0 + 2 * eps) if ddof == 0 else 1.0 / (np.sqrt(2.0) + 2 * eps)
    np.testing.assert_allclose(
        seq.grpo_advantages(r, eps=eps, ddof=ddof),
        factor * seq.rloo_advantages(r),
        rtol=1e-6,
    )


def test_grpo_binary_rewards_fixed_multiple_at_k2_and_k3_only():
    """Exactly by enumeration: with a 0/1 reward GRPO's expected gradient is parallel to ∇E[R]
    for every K (exchangeability: it is (a₁ − a₀)·∇P(R = 1)), with a factor that is a constant
    at K = 2 (1/(√2 + 2ε), ddof 1) and K = 3 (every informative group has the same std), but
    depends on θ at K = 4; with the count reward it is not parallel at all."""
    pol = TinySequencePolicy(reward_kind="binary")
    th, thr, g = _grads(pol, "reward")
    mean = exact_gradient_moments(pol, th, thr, 2, advantage="grpo")["mean"]
    np.testing.assert_allclose(mean, g / (np.sqrt(2.0) + 2e-4), rtol=1e-5, atol=1e-7)
    mean3 = exact_gradient_moments(pol, th, thr, 3, advantage="grpo")["mean"]
    np.testing.assert_allclose(mean3, g * (2 / 3) / (np.sqrt(1 / 3) + 1e-4), rtol=1e-5, atol=1e-7)

    def factor(theta, k):
        g = np.asarray(pol.exact_grads(theta, thr)["reward"]).ravel()
        m = exact_gradient_moments(pol, theta, thr, k, advantage="grpo")["mean"]
        c = m @ g / (g @ g)
        return c, np.linalg.norm(m - c * g) / np.linalg.norm(m)

    # P(R = 1) = 0.57 at θ, 0.97 after a step of 3 along ∇E[R]: factor 1.4015 vs 1.4894
    step = jnp.asarray(g.reshape(th.shape)) / np.linalg.norm(g)
    (c_a, perp_a), (c_b, perp_b) = factor(th, 4), factor(th + 3.0 * step, 4)
    assert perp_a < 1e-5 and perp_b < 1e-4  # parallel to ∇E[R] ...
    assert c_b - c_a > 0.08  # ... but not a fixed multiple
    count = TinySequencePolicy()
    th, thr, g = _grads(count, "reward")
    m = exact_gradient_moments(count, th, thr, 2, advantage="grpo")["mean"]
    c = m @ g / (g @ g)
    assert np.linalg.norm(m - c * g) / np.linalg.norm(m) > 1e-2


def test_k1_loss_gradient_depends_on_the_aggregation():
    """k1 as a loss term: no expected gradient with token sums, −β∇E[1/|y|] with per-sequence
    token means (lengths 1-3 here)."""
    pol = TinySequencePolicy(reward_scale=0.0)
    th, thr, g_inv = _grads(pol, "inverse_length")
    kw = dict(advantage="reinforce", kl="k1-loss", beta=0.5)
    out = exact_gradient_moments(
        pol,
        th,
        thr,
        1,
        variants=[
            dict(kw, loss_agg_mode="seq-mean-token-sum"),
            dict(kw, loss_agg_mode="seq-mean-token-mean"),
        ],
    )
    np.testing.assert_allclose(out["mean"][0], 0.0, atol=1e-7)
    np.testing.assert_allclose(out["mean"][1], -0.5 * g_inv, rtol=1e-5, atol=1e-7)
    assert np.abs(g_inv).max() > 0.05


def test_k3_loss_is_the_forward_kl_gradient_at_one_token():
    one = TinySequencePolicy(length=1, reward_scale=0.0)
    th, thr, g_fwd = _grads(one, "forward_kl")
    m = exact_gradient_moments(one, th, thr, 1, advantage="reinforce", kl="k3-loss", beta=1.0)
    np.testing.assert_allclose(m["mean"], -g_fwd, rtol=1e-5, atol=1e-7)  # ascent = −∇ loss


def test_reverse_kl_key_is_a_deprecated_alias_of_forward_kl():
    pol = TinySequencePolicy()
    th, thr = pol.init_params(), pol.init_params("reference")
    values, grads = pol.exact_values(th, thr), pol.exact_grads(th, thr)
    assert "reverse_kl" not in values  # not listed, only still answered
    with pytest.warns(DeprecationWarning, match="forward"):
        assert float(values["reverse_kl"]) == float(values["forward_kl"])
    with pytest.warns(DeprecationWarning):
        np.testing.assert_array_equal(grads["reverse_kl"], grads["forward_kl"])
    # KL(π‖π_ref) and KL(π_ref‖π) differ here; "kl" is the former
    lp, lr = np.asarray(pol.seq_logp(th)), np.asarray(pol.seq_logp(thr))
    assert float(values["kl"]) == pytest.approx(np.sum(np.exp(lp) * (lp - lr)), rel=1e-5)
    assert float(values["forward_kl"]) == pytest.approx(np.sum(np.exp(lr) * (lr - lp)), rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ = values["forward_kl"]


def test_reinforce_pp_bias_shrinks_like_one_over_the_batch_size():
    """Batch normalisation over N = G·K completions: the expected estimate tends to
    ∇E[R]/σ(R) with a relative bias c/N + O(1/N²) (exactly, L = 2 policy, 7 sequences):
    N·bias = 0.955, 0.834, 0.749, 0.703, 0.681 for N = 2…6 (a fit c + d/N on N = 5, 6 gives
    c ≈ 0.57)."""
    pol = TinySequencePolicy(length=2)
    th, thr, g = _grads(pol, "reward")
    p = np.exp(np.asarray(pol.seq_logp(th), np.float64))
    sigma = np.sqrt(p @ (pol.rewards - p @ pol.rewards) ** 2)
    target = g / sigma
    scaled = []
    for n in (2, 3, 4, 5, 6):
        m = exact_gradient_moments(pol, th, thr, n, advantage="reinforce++")["mean"]
        scaled.append(n * np.linalg.norm(m - target) / np.linalg.norm(target))
    np.testing.assert_allclose(scaled, [0.955, 0.834, 0.749, 0.703, 0.681], atol=3e-3)
    assert all(a > b for a, b in zip(scaled, scaled[1:], strict=False))  # N·bias bounded, falling


@pytest.mark.parametrize("k", [2, 3])
def test_dynamic_sampling_divides_the_expected_gradient_by_p_informative(k):
    """DAPO's dynamic sampling keeps only groups whose rewards differ (``dynamic_sampling_mask``)
    and resamples until the batch is full: the batch is drawn conditionally on informative
    groups. RLOO's, Dr. GRPO's and GRPO's advantages vanish on the other groups, so the
    conditional expected gradient is the unconditional one divided by P(informative): ∇E[R]/P
    for RLOO, (K−1)/K · ∇E[R]/P for Dr. GRPO (count reward: P = 0.619 at K = 2, 0.843 at K = 3)."""
    pol = TinySequencePolicy()
    th, thr, g = _grads(pol, "reward")
    # the enumeration's condition is dynamic_sampling_mask's, on every group of k completions
    idx = np.array(list(itertools.product(range(pol.num_sequences), repeat=k)))
    r = pol.rewards[idx]
    np.testing.assert_array_equal(seq.dynamic_sampling_mask(r), r.max(-1) > r.min(-1))
    # P(informative) = 1 − Σ_v P(R = v)^K
    p = np.exp(np.asarray(pol.seq_logp(th), np.float64))
    p_equal = sum(p[pol.rewards == v].sum() ** k for v in np.unique(pol.rewards))
    names = ["rloo", "dr-grpo", "grpo"]
    variants = [dict(advantage=a) for a in names]
    plain = exact_gradient_moments(pol, th, thr, k, variants=variants)
    kept = exact_gradient_moments(pol, th, thr, k, variants=variants, condition="informative")
    prob = kept["prob"]
    assert prob == pytest.approx(1.0 - p_equal, rel=1e-5)
    assert prob < 0.85  # a factor 1/P that the comparisons below can see
    np.testing.assert_allclose(kept["mean"], plain["mean"] / prob, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kept["mean"][0], g / prob, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kept["mean"][1], (k - 1) / k * g / prob, rtol=1e-5, atol=1e-7)
