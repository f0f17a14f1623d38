"""The 2025–26 losses, corrections and baselines of expectax.rl.sequence (issue 19, item 1).

Values against their formulas written out by hand, gradients at π = π_old against the
REINFORCE form each reduces to, unbiasedness exactly by enumeration where the docs claim it,
and bad input refused with the argument named (also under jit with the arrays closed over).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectax.problems.sequence import TinySequencePolicy, exact_gradient_moments
from expectax.rl import sequence as seq

LP = jnp.log(jnp.array([[[0.5, 0.2, 0.9], [0.3, 0.6, 0.1]]]))  # (1, 2, 3)
OLD = jnp.log(jnp.array([[[0.4, 0.25, 0.9], [0.5, 0.5, 0.2]]]))
M = jnp.array([[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]])
ADV = jnp.array([[1.5, -0.5]])
LENGTHS = np.array([3.0, 2.0])


def test_gspo_value_and_gradient(strict_ranks):
    logr = np.asarray(((LP - OLD) * M).sum(-1))[0] / LENGTHS
    s = np.exp(logr)
    a = np.asarray(ADV[0])
    lo, hi = 1 - 0.2, 1 + 0.3
    want = np.mean(-np.minimum(s * a, np.clip(s, lo, hi) * a))
    got = seq.gspo_loss(LP, OLD, ADV, M, epsilon_low=0.2, epsilon_high=0.3)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # same as sequence_policy_loss at the sequence level
    same = seq.sequence_policy_loss(
        LP, ADV, M, OLD, 0.2, 0.3, "seq-mean-token-mean", importance_sampling_level="sequence"
    )
    assert float(same) == pytest.approx(want, rel=1e-6)
    # at π = π_old: −A_i/(N |y_i|) per token
    g = jax.grad(lambda lp: seq.gspo_loss(lp, None, ADV, M))(LP)
    np.testing.assert_allclose(g, -(ADV[..., None] * M) / (2 * LENGTHS[None, :, None]), rtol=1e-6)


def test_cispo_weights_are_clipped_constants(strict_ranks):
    ratio = np.exp(np.asarray(LP - OLD))
    w = np.clip(ratio, 0.0, 1.1)
    g = jax.grad(lambda lp: seq.cispo_loss(lp, OLD, ADV, M, epsilon_high=0.1))(LP)
    want = -w * np.asarray(ADV)[..., None] * np.asarray(M) / np.asarray(M).sum()  # token-mean
    np.testing.assert_allclose(g, want, rtol=1e-6)
    # a lower bound clips from below too
    g2 = jax.grad(lambda lp: seq.cispo_loss(lp, OLD, ADV, M, 0.1, 0.1, "seq-mean-token-sum"))(LP)
    want2 = -np.clip(ratio, 0.9, 1.1) * np.asarray(ADV)[..., None] * np.asarray(M) / 2
    np.testing.assert_allclose(g2, want2, rtol=1e-6)


def test_sapo_gate_and_its_gradient(strict_ranks):
    ratio = np.exp(np.asarray(LP - OLD))
    a = np.broadcast_to(np.asarray(ADV)[..., None], ratio.shape)
    tau = np.where(a > 0, 1.0, 1.05)
    sig = 1 / (1 + np.exp(-tau * (ratio - 1)))
    per_tok = -sig * 4 / tau * a
    m = np.asarray(M)
    want = np.mean((per_tok * m).sum(-1) / m.sum(-1))
    assert float(seq.sapo_loss(LP, OLD, ADV, M)) == pytest.approx(want, rel=1e-6)
    # gradient 4σ(1−σ)·ρ·A ∇log π; at ρ = 1 it is A ∇ log π (seq-mean-token-mean)
    g1 = jax.grad(lambda lp: seq.sapo_loss(lp, None, ADV, M))(LP)
    np.testing.assert_allclose(g1, -a * m / (2 * m.sum(-1, keepdims=True)), rtol=1e-6)


def test_gmpo_geometric_mean_with_log_space_clip(strict_ranks):
    logr = np.asarray(LP - OLD)
    m = np.asarray(M)
    a = np.asarray(ADV[0])
    out = []
    for i in range(2):
        sg = np.sign(a[i])
        lr = sg * np.minimum(sg * logr[0, i], sg * np.clip(logr[0, i], -0.1, 0.1))
        out.append(-a[i] * np.exp((lr * m[0, i]).sum() / m[0, i].sum()))
    got = seq.gmpo_loss(LP, OLD, ADV, M, epsilon_low=0.1, epsilon_high=0.1)
    assert float(got) == pytest.approx(np.mean(out), rel=1e-6)


def test_vespo_kernel(strict_ranks):
    logw = np.asarray(((LP - OLD) * M).sum(-1))[0]
    w = np.exp(logw)
    a = np.asarray(ADV[0])
    k = np.where(a >= 0, 2.0, 3.0)
    lam = np.where(a >= 0, 3.0, 2.0)
    phi = w**k * np.exp(lam * (1 - w))
    g = jax.grad(lambda lp: seq.vespo_loss(lp, OLD, ADV, M, loss_agg_mode="seq-mean-token-sum"))(LP)
    np.testing.assert_allclose(g, -(phi * a)[None, :, None] * M / 2, rtol=1e-5)
    # the kernel is 1 at W = 1: on-policy it is REINFORCE
    g1 = jax.grad(lambda lp: seq.vespo_loss(lp, None, ADV, M, loss_agg_mode="seq-mean-token-sum"))(
        LP
    )
    np.testing.assert_allclose(g1, -ADV[..., None] * M / 2, rtol=1e-6)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_rollout_correction_weights(level, strict_ranks):
    log_rho = np.asarray((OLD - LP) * M)  # trainer = OLD, rollout = LP
    if level == "sequence":
        log_rho = np.broadcast_to(log_rho.sum(-1, keepdims=True), log_rho.shape)
    rho = np.exp(log_rho)
    m = np.asarray(M)
    w = {
        mode: np.asarray(seq.rollout_correction_weights(OLD, LP, M, level, mode, threshold=1.5))
        for mode in seq.ROLLOUT_CORRECTION_MODES
    }
    np.testing.assert_allclose(w["truncate"], np.minimum(rho, 1.5) * m, rtol=1e-6)
    np.testing.assert_allclose(w["mask"], np.where(rho <= 1.5, rho, 0.0) * m, rtol=1e-6)
    np.testing.assert_allclose(w["reject"], np.where(rho <= 1.5, 1.0, 0.0) * m, rtol=1e-6)
    low = seq.rollout_correction_weights(OLD, LP, M, level, "mask", 1.5, threshold_low=0.9)
    np.testing.assert_allclose(low, np.where((rho <= 1.5) & (rho >= 0.9), rho, 0) * m, rtol=1e-6)


def test_dapo_pieces():
    r = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5]], np.float32)
    np.testing.assert_array_equal(seq.dynamic_sampling_mask(r), [0.0, 1.0, 0.0])
    pen = seq.overlong_penalty(np.array([[10.0, 16.0, 19.0, 20.0, 21.0]]), 20, 4)
    np.testing.assert_allclose(pen, [[0.0, 0.0, -0.75, -1.0, -1.0]])


def test_baselines_values():
    r = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32)
    n = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 4.0]], np.float32)
    b = (n * r).sum(1, keepdims=True) / n.sum(1, keepdims=True)
    np.testing.assert_allclose(seq.opo_advantages(r, n), r - b, rtol=1e-6)
    loo = ((n * r).sum(1, keepdims=True) - n * r) / (n.sum(1, keepdims=True) - n)
    np.testing.assert_allclose(seq.opo_advantages(r, n, leave_one_out=True), r - loo, rtol=1e-6)
    # James–Stein with 3 groups, by the formula written out per sample
    r3 = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    g, k = r3.shape
    want = np.zeros_like(r3)
    for i in range(g):
        o = [h for h in range(g) if h != i]
        means = r3[o].mean(1)
        v = np.mean(r3[o].var(1, ddof=1) / k)
        s2 = np.mean((means - means.mean()) ** 2)
        lam = v / (v + s2 + 1e-6)
        for j in range(k):
            loo = (r3[i].sum() - r3[i, j]) / (k - 1)
            want[i, j] = r3[i, j] - ((1 - lam) * loo + lam * r3[o].mean())
    np.testing.assert_allclose(seq.james_stein_advantages(r3), want, rtol=1e-5, atol=1e-6)
    # GDPO: per-reward group normalisation, sum, batch normalisation
    rr = np.stack([r3, 10 * r3[::-1]], -1)
    d = rr - rr.mean(1, keepdims=True)
    z = (d / (rr.std(1, ddof=1, keepdims=True) + 1e-4)).sum(-1)
    want = (z - z.mean()) / (z.std() + 1e-4)
    np.testing.assert_allclose(seq.gdpo_advantages(rr), want, rtol=1e-5, atol=1e-6)


def _opo_expected_gradient(pol, th, thr, k, leave_one_out):
    """E[−∇ loss] of ``opo_advantages`` with RLOO's loss (token sums), one group of ``k``, by
    enumerating every batch (``advantage="opo"`` of ``exact_gradient_moments`` is the published
    form only)."""
    idx = np.array(list(itertools.product(range(pol.num_sequences), repeat=k))).reshape(-1, 1, k)
    prob = np.exp(np.asarray(pol.seq_logp(th), np.float64)[idx].sum(axis=(1, 2)))

    def ascent(i):
        def loss(theta):
            b = pol.batch(theta, thr, i)
            adv = seq.opo_advantages(b["rewards_gk"], b["lengths_gk"], leave_one_out)
            return seq.sequence_policy_loss(b["logp_gkt"], adv, b["mask_gkt"])

        return -jax.grad(loss)(th).ravel()

    grads = np.asarray(jax.jit(jax.vmap(ascent))(jnp.asarray(idx)), np.float64)
    return prob @ grads


def test_unbiased_baselines_exactly_by_enumeration():
    """James–Stein (other groups only) and OPO leave-one-out are unbiased for ∇E[R]; OPO as
    published (the sample in its own baseline) is not, and not parallel either. OPO at K = 3,
    where the leave-one-out baseline is a length-weighted mean of two rewards (not RLOO's)."""
    pol = TinySequencePolicy()
    th, thr = pol.init_params(), pol.init_params("reference")
    g = np.asarray(pol.exact_grads(th, thr)["reward"]).ravel()
    out = exact_gradient_moments(
        pol, th, thr, 2, groups=2, variants=[dict(advantage="james-stein")]
    )
    np.testing.assert_allclose(out["mean"][0], g, rtol=1e-5, atol=1e-7)
    opo = exact_gradient_moments(pol, th, thr, 3, advantage="opo")["mean"]
    # the enumeration here reproduces exact_gradient_moments' on the published form
    np.testing.assert_allclose(
        _opo_expected_gradient(pol, th, thr, 3, False), opo, rtol=1e-5, atol=1e-7
    )
    c = opo @ g / (g @ g)
    assert np.linalg.norm(opo - c * g) / np.linalg.norm(opo) > 1e-3
    loo = _opo_expected_gradient(pol, th, thr, 3, True)
    np.testing.assert_allclose(loo, g, rtol=1e-5, atol=1e-7)


def test_k3_ratio_kl_loss_is_unbiased_at_sequence_level_exactly():
    pol = TinySequencePolicy(reward_scale=0.0)
    th, thr = pol.init_params(), pol.init_params("reference")
    g = np.asarray(pol.exact_grads(th, thr)["kl"]).ravel()
    mu = pol.behaviour_params(th, 0.5)
    out = exact_gradient_moments(
        pol,
        th,
        thr,
        1,
        variants=[
            dict(advantage="reinforce", kl="k3-is-seq-loss", beta=1.0, correction="sequence-is"),
            dict(advantage="reinforce", kl="k3-is-loss", beta=1.0, correction="sequence-is"),
        ],
        theta_behaviour=mu,
    )
    np.testing.assert_allclose(out["mean"][0], -g, rtol=1e-4, atol=1e-6)
    assert np.linalg.norm(out["mean"][1] + g) / np.linalg.norm(g) > 1e-2  # per token: biased


def test_sequence_is_unbiased_truncation_biased_under_mismatch_exactly():
    pol = TinySequencePolicy()
    th, thr = pol.init_params(), pol.init_params("reference")
    g = np.asarray(pol.exact_grads(th, thr)["reward"]).ravel()
    mu = pol.behaviour_params(th, 1.0)
    names = ["sequence-is", "sequence-truncate", "token-truncate", None]
    out = exact_gradient_moments(
        pol,
        th,
        thr,
        2,
        variants=[dict(advantage="rloo", correction=c) for c in names],
        theta_behaviour=mu,
    )
    rel = np.linalg.norm(out["mean"] - g, axis=1) / np.linalg.norm(g)
    assert rel[0] < 1e-5
    assert rel[1] > 1e-3 and rel[2] > 1e-3 and rel[3] > 1e-2


EMPTY = M.at[0, 1].set(0.0)  # built outside jit: closed over, the values are known
NOT_LOGP = -OLD
NEGATIVE = -jnp.ones_like(LP)
BAD = {
    "gspo-eps": (
        lambda: seq.gspo_loss(LP, OLD, ADV, M, epsilon_low=-0.1),
        "gspo_loss: epsilon_low",
    ),
    "cispo-adv": (lambda: seq.cispo_loss(LP, OLD, ADV[:, :1], M), "cispo_loss: advantages has"),
    "sapo-tau": (lambda: seq.sapo_loss(LP, OLD, ADV, M, tau_neg=0.0), "sapo_loss: tau_neg"),
    "gmpo-empty": (
        lambda: seq.gmpo_loss(LP, OLD, ADV, EMPTY),
        r"gmpo_loss: mask_gkt leaves sequence \(group 0, completion 1\)",
    ),
    "vespo-k": (lambda: seq.vespo_loss(LP, OLD, ADV, M, k_pos=-1.0), "vespo_loss: k_pos"),
    "vespo-old-logits": (
        lambda: seq.vespo_loss(LP, NOT_LOGP, ADV, M),
        "vespo_loss: old_logp_gkt must hold log-probabilities",
    ),
    "rollout-mode": (
        lambda: seq.rollout_correction_weights(OLD, LP, mode="clip"),
        "rollout_correction_weights: mode must be one of truncate, mask, reject",
    ),
    "rollout-level": (
        lambda: seq.rollout_correction_weights(OLD, LP, importance_sampling_level="seq"),
        "rollout_correction_weights: importance_sampling_level must be 'token' or 'sequence'",
    ),
    "rollout-threshold": (
        lambda: seq.rollout_correction_weights(OLD, LP, threshold=0.0),
        "rollout_correction_weights: threshold must be a scalar > 0",
    ),
    "rollout-shape": (
        lambda: seq.rollout_correction_weights(OLD, LP[:, :1]),
        "rollout_correction_weights: rollout_logp_gkt has shape",
    ),
    "rollout-low-truncate": (
        lambda: seq.rollout_correction_weights(OLD, LP, threshold_low=0.5),
        "threshold_low is for mode='mask' or 'reject'",
    ),
    "policy-loss-weights": (
        lambda: seq.sequence_policy_loss(LP, ADV, M, rollout_is_weights_gkt=NEGATIVE),
        "sequence_policy_loss: rollout_is_weights_gkt must be ≥ 0",
    ),
    "policy-loss-level": (
        lambda: seq.sequence_policy_loss(LP, ADV, importance_sampling_level="tokens"),
        "sequence_policy_loss: importance_sampling_level must be",
    ),
    "overlong": (
        lambda: seq.overlong_penalty(np.ones((1, 2)), 10, 10),
        "overlong_penalty: need integers 0 < cache_length < max_length",
    ),
    "opo-lengths": (
        lambda: seq.opo_advantages(np.ones((1, 2)), np.array([[1.0, 0.0]])),
        r"opo_advantages: lengths_gk must be finite and > 0 .* index \(0, 1\)",
    ),
    "james-stein-one-group": (
        lambda: seq.james_stein_advantages(np.ones((1, 3))),
        "james_stein_advantages: rewards_gk has G=1 group",
    ),
    "gdpo-weights": (
        lambda: seq.gdpo_advantages(np.ones((2, 3, 2)), np.ones(3)),
        r"gdpo_advantages: reward_weights has shape \(3,\)",
    ),
    "gdpo-rank": (
        lambda: seq.gdpo_advantages(np.ones((2, 3))),
        "gdpo_advantages: rewards_gkr must have rank 3",
    ),
    "kl-old-without-flag": (
        lambda: seq.kl_loss(LP, OLD, M, old_logp_gkt=OLD),
        "kl_loss: old_logp_gkt is only used with importance_weighted=True",
    ),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_argument(case, jit):
    call, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        jax.jit(call)() if jit else call()


def test_losses_trace_under_jit_with_traced_arrays():
    for fn in (seq.gspo_loss, seq.cispo_loss, seq.sapo_loss, seq.gmpo_loss, seq.vespo_loss):
        eager = fn(LP, OLD, ADV, M)
        traced = jax.jit(fn)(LP, OLD, ADV, M)
        assert float(traced) == pytest.approx(float(eager), rel=1e-6), fn.__name__
