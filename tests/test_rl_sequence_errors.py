"""Bad input to every public function of expectax.rl.sequence (issue 11, item 5).

Each case is a mistake a trainer makes: a group of size 1 with a leave-one-out or group
baseline, a mask that empties a sequence (or the batch) or is not a mask, mismatched shapes,
NaN rewards or advantages, and log-probabilities of the wrong policy or batch (positive values
such as logits, NaN, -inf for a token the policy cannot emit, shapes from another batch). Every
case raises a ``ValueError`` whose message starts with the function called and names the
argument; each runs with NumPy and with JAX inputs (values are checked when concrete).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from expectax.rl import sequence as seq

G, K, T = 2, 3, 4
R = np.array([[1.0, 0.0, 2.0], [0.5, 0.5, 1.0]], np.float32)
LP = np.log(np.full((G, K, T), 0.5, np.float32))
REF = np.log(np.full((G, K, T), 0.25, np.float32))
M = np.ones((G, K, T), np.float32)
ADV = np.ones((G, K), np.float32)
LOSS = np.ones((G, K, T), np.float32)


def nan_at(x, index):
    x = x.copy()
    x[index] = np.nan
    return x


def set_at(x, index, value):
    x = x.copy()
    x[index] = value
    return x


EMPTY_SEQ = set_at(M, (1, 2), 0.0)
NO_TOKENS = np.zeros_like(M)
NOT_A_MASK = set_at(M, (0, 1, 2), 2.0)
POSITIVE = set_at(LP, (0, 0, 1), 3.0)  # logits passed as log-probs
MINUS_INF = set_at(REF, (1, 0, 0), -np.inf)  # a token of probability 0 under that policy
OTHER_BATCH = np.log(np.full((G, K + 1, T), 0.5, np.float32))

K1 = "has K=1 completion"
CASES = {
    # ---- a group of size 1 with a leave-one-out or group baseline
    "rloo-k1": (lambda S: S.rloo_advantages(R[:, :1]), rf"rloo_advantages: rewards_gk {K1}"),
    "grpo-k1": (lambda S: S.grpo_advantages(R[:, :1]), rf"grpo_advantages: rewards_gk {K1}"),
    "dr-grpo-k1": (
        lambda S: S.dr_grpo_advantages(R[:, :1]),
        rf"dr_grpo_advantages: rewards_gk {K1}",
    ),
    "reinforce++-baseline-k1": (
        lambda S: S.reinforce_pp_advantages(R[:, :1], group_baseline=True),
        rf"reinforce_pp_advantages: rewards_gk {K1}.*group_baseline=True",
    ),
    # ---- NaN rewards (the index is named), NaN baselines and advantages
    **{
        f"{name}-nan-rewards": (
            lambda S, fn=fn: fn(S, nan_at(R, (1, 2))),
            rf"{name}: rewards_gk has a non-finite entry .* index \(1, 2\)",
        )
        for name, fn in {
            "reinforce_advantages": lambda S, r: S.reinforce_advantages(r),
            "rloo_advantages": lambda S, r: S.rloo_advantages(r),
            "grpo_advantages": lambda S, r: S.grpo_advantages(r),
            "dr_grpo_advantages": lambda S, r: S.dr_grpo_advantages(r),
            "reinforce_pp_advantages": lambda S, r: S.reinforce_pp_advantages(r),
            "remax_advantages": lambda S, r: S.remax_advantages(r, np.zeros(G, np.float32)),
            "kl_penalized_rewards": lambda S, r: S.kl_penalized_rewards(r, LP, REF, M),
        }.items()
    },
    "reinforce-nan-baseline": (
        lambda S: S.reinforce_advantages(R, np.array([0.5, np.nan], np.float32)),
        r"reinforce_advantages: baseline has a non-finite entry .* index \(1,\)",
    ),
    "remax-nan-greedy": (
        lambda S: S.remax_advantages(R, np.array([np.nan, 0.0], np.float32)),
        r"remax_advantages: greedy_rewards_g has a non-finite entry",
    ),
    "clipped-nan-advantages": (
        lambda S: S.clipped_surrogate(np.ones_like(LP), nan_at(ADV, (0, 1))),
        r"clipped_surrogate: advantages has a non-finite entry .* index \(0, 1\)",
    ),
    "policy-loss-nan-advantages": (
        lambda S: S.sequence_policy_loss(LP, nan_at(ADV, (0, 1)), M),
        r"sequence_policy_loss: advantages has a non-finite entry",
    ),
    "aggregate-nan-loss": (
        lambda S: S.aggregate_loss(nan_at(LOSS, (0, 0, 3)), M),
        r"aggregate_loss: loss_gkt has a non-finite entry .* index \(0, 0, 3\)",
    ),
    # ---- mismatched shapes and ranks
    "rewards-rank": (
        lambda S: S.rloo_advantages(R.reshape(-1)),
        r"rloo_advantages: rewards_gk must have rank 2 .* got shape \(6,\)",
    ),
    "reinforce-baseline-shape": (
        lambda S: S.reinforce_advantages(R, np.zeros(3, np.float32)),
        r"reinforce_advantages: baseline has shape \(3,\)",
    ),
    "remax-greedy-shape": (
        lambda S: S.remax_advantages(R, np.zeros(3, np.float32)),
        r"remax_advantages: greedy_rewards_g has shape \(3,\)",
    ),
    "reinforce++-mask-shape": (
        lambda S: S.reinforce_pp_advantages(R, np.ones((G, K + 1), np.float32)),
        r"reinforce_pp_advantages: mask_gk has shape \(2, 4\) but rewards_gk",
    ),
    "kl-penalized-logp-batch": (
        lambda S: S.kl_penalized_rewards(R, OTHER_BATCH, OTHER_BATCH),
        r"kl_penalized_rewards: logp_gkt has \(G, K\) = \(2, 4\) but rewards_gk",
    ),
    "clipped-advantages-shape": (
        lambda S: S.clipped_surrogate(np.ones_like(LP), np.ones((G, K + 1), np.float32)),
        r"clipped_surrogate: advantages has shape \(2, 4\) but ratio_gkt",
    ),
    "policy-loss-advantages-shape": (
        lambda S: S.sequence_policy_loss(LP, np.ones((G, K + 1), np.float32)),
        r"sequence_policy_loss: advantages has shape \(2, 4\) but logp_gkt",
    ),
    "policy-loss-logp-rank": (
        lambda S: S.sequence_policy_loss(LP.sum(-1), ADV),
        r"sequence_policy_loss: logp_gkt must have rank 3",
    ),
    **{
        f"{name}-mask-shape": (
            lambda S, fn=fn: fn(S, M[:, :, :2]),
            rf"{name}: mask_gkt has shape \(2, 3, 2\) but {like} has shape \(2, 3, 4\)",
        )
        for name, fn, like in [
            ("kl_estimate", lambda S, m: S.kl_estimate(LP, REF, m), "logp_gkt"),
            (
                "kl_penalized_rewards",
                lambda S, m: S.kl_penalized_rewards(R, LP, REF, m),
                "logp_gkt",
            ),
            ("kl_loss", lambda S, m: S.kl_loss(LP, REF, m), "logp_gkt"),
            ("aggregate_loss", lambda S, m: S.aggregate_loss(LOSS, m), "loss_gkt"),
            ("sequence_policy_loss", lambda S, m: S.sequence_policy_loss(LP, ADV, m), "logp_gkt"),
        ]
    },
    # ---- masks that empty a sequence or the batch, or are not masks
    **{
        f"{name}-empty-sequence": (
            lambda S, fn=fn: fn(S, EMPTY_SEQ, "seq-mean-token-mean"),
            rf"{name}: mask_gkt leaves sequence \(group 1, completion 2\) with no tokens",
        )
        for name, fn in {
            "aggregate_loss": lambda S, m, mode: S.aggregate_loss(LOSS, m, mode),
            "sequence_policy_loss": lambda S, m, mode: S.sequence_policy_loss(
                LP, ADV, m, loss_agg_mode=mode
            ),
            "kl_loss": lambda S, m, mode: S.kl_loss(LP, REF, m, loss_agg_mode=mode),
        }.items()
    },
    **{
        f"{name}-no-tokens": (
            lambda S, fn=fn: fn(S, NO_TOKENS, "token-mean"),
            rf"{name}: mask_gkt has no tokens at all, so 'token-mean'",
        )
        for name, fn in {
            "aggregate_loss": lambda S, m, mode: S.aggregate_loss(LOSS, m, mode),
            "sequence_policy_loss": lambda S, m, mode: S.sequence_policy_loss(
                LP, ADV, m, loss_agg_mode=mode
            ),
            "kl_loss": lambda S, m, mode: S.kl_loss(LP, REF, m, loss_agg_mode=mode),
        }.items()
    },
    **{
        f"{name}-not-a-mask": (
            lambda S, fn=fn: fn(S, NOT_A_MASK),
            rf"{name}: mask_gkt must hold 1 for tokens and 0 for padding .* index \(0, 1, 2\)",
        )
        for name, fn in {
            "kl_estimate": lambda S, m: S.kl_estimate(LP, REF, m),
            "kl_penalized_rewards": lambda S, m: S.kl_penalized_rewards(R, LP, REF, m),
            "kl_loss": lambda S, m: S.kl_loss(LP, REF, m),
            "aggregate_loss": lambda S, m: S.aggregate_loss(LOSS, m),
            "sequence_policy_loss": lambda S, m: S.sequence_policy_loss(LP, ADV, m),
        }.items()
    },
    "reinforce++-mask-excludes-all": (
        lambda S: S.reinforce_pp_advantages(R, np.zeros((G, K), np.float32)),
        r"reinforce_pp_advantages: mask_gk excludes every completion",
    ),
    "reinforce++-not-a-mask": (
        lambda S: S.reinforce_pp_advantages(R, -np.ones((G, K), np.float32)),
        r"reinforce_pp_advantages: mask_gk must hold 1 for tokens and 0",
    ),
    # ---- log-probs of the wrong policy: logits (positive), NaN, -inf, another batch's shape
    **{
        f"{name}-logits-as-logp": (
            lambda S, fn=fn: fn(S, POSITIVE),
            rf"{name}: logp_gkt must hold log-probabilities \(≤ 0\), got a maximum of 3 "
            r"\(first positive at index \(0, 0, 1\)\).*not the logits",
        )
        for name, fn in {
            "kl_estimate": lambda S, lp: S.kl_estimate(lp, REF),
            "kl_penalized_rewards": lambda S, lp: S.kl_penalized_rewards(R, lp, REF),
            "kl_loss": lambda S, lp: S.kl_loss(lp, REF),
            "importance_ratios": lambda S, lp: S.importance_ratios(lp),
            "sequence_policy_loss": lambda S, lp: S.sequence_policy_loss(lp, ADV),
        }.items()
    },
    **{
        f"{name}-{arg}-{kind}": (
            lambda S, fn=fn, bad=bad: fn(S, bad),
            rf"{name}: {arg} {match}",
        )
        for name, fn, arg in [
            ("kl_estimate", lambda S, x: S.kl_estimate(LP, x), "ref_logp_gkt"),
            ("kl_penalized_rewards", lambda S, x: S.kl_penalized_rewards(R, LP, x), "ref_logp_gkt"),
            ("kl_loss", lambda S, x: S.kl_loss(LP, x), "ref_logp_gkt"),
            ("importance_ratios", lambda S, x: S.importance_ratios(LP, x), "old_logp_gkt"),
            (
                "sequence_policy_loss",
                lambda S, x: S.sequence_policy_loss(LP, ADV, old_logp_gkt=x),
                "old_logp_gkt",
            ),
        ]
        for kind, bad, match in [
            ("positive", POSITIVE, r"must hold log-probabilities \(≤ 0\)"),
            ("nan", nan_at(REF, (0, 2, 1)), r"contains NaN \(first at index \(0, 2, 1\)\)"),
            ("inf", MINUS_INF, r"is infinite at index \(1, 0, 0\).*another policy or batch"),
            ("other-batch", OTHER_BATCH, r"has shape \(2, 4, 4\) but logp_gkt has shape"),
        ]
    },
    # ---- the same log-prob checks at GSPO's sequence level (issue 19: logp_gkt passed unchecked)
    **{
        f"sequence_policy_loss-sequence-level-{arg}-{kind}": (
            lambda S, call=call, bad=bad: call(S, bad),
            rf"sequence_policy_loss: {arg} {match}",
        )
        for arg, call in {
            "logp_gkt": lambda S, x: S.sequence_policy_loss(
                x, ADV, importance_sampling_level="sequence"
            ),
            "old_logp_gkt": lambda S, x: S.sequence_policy_loss(
                LP, ADV, old_logp_gkt=x, importance_sampling_level="sequence"
            ),
        }.items()
        for kind, bad, match in [
            ("positive", POSITIVE, r"must hold log-probabilities \(≤ 0\).*not the logits"),
            ("nan", nan_at(LP, (0, 2, 1)), r"contains NaN \(first at index \(0, 2, 1\)\)"),
            ("inf", set_at(LP, (1, 0, 0), -np.inf), r"is infinite at index \(1, 0, 0\)"),
        ]
    },
    # ---- options
    "kl-estimator": (
        lambda S: S.kl_loss(LP, REF, estimator="k4"),
        r"kl_loss: estimator must be 'k1', 'k2' or 'k3', got 'k4'",
    ),
    "kl-level": (
        lambda S: S.kl_estimate(LP, REF, level="batch"),
        r"kl_estimate: level must be 'token' or 'sequence'",
    ),
    "kl-beta": (
        lambda S: S.kl_penalized_rewards(R, LP, REF, beta=float("nan")),
        r"kl_penalized_rewards: beta must be ≥ 0 \(and not NaN\)",
    ),
    "agg-mode": (
        lambda S: S.sequence_policy_loss(LP, ADV, loss_agg_mode="mean"),
        r"sequence_policy_loss: loss_agg_mode must be one of seq-mean-token-sum",
    ),
    "agg-constant": (
        lambda S: S.aggregate_loss(LOSS, M, "seq-mean-token-sum-norm", constant=0.0),
        r"aggregate_loss: constant must be > 0",
    ),
    "clip-eps": (
        lambda S: S.sequence_policy_loss(LP, ADV, old_logp_gkt=LP, clip_eps=-0.2),
        r"sequence_policy_loss: clip_eps must be ≥ 0",
    ),
    "grpo-ddof": (
        lambda S: S.grpo_advantages(R, ddof=2),
        r"grpo_advantages: ddof must be 0 or 1",
    ),
    # eps=-1 used to give ±inf and NaN silently (issue 19)
    **{
        f"{name}-eps-{bad}": (
            lambda S, fn=fn, bad=bad: fn(S, float(bad)),
            rf"{name}: eps must be a finite scalar ≥ 0 .* got {bad}",
        )
        for name, fn in {
            "grpo_advantages": lambda S, e: S.grpo_advantages(R, eps=e),
            "reinforce_pp_advantages": lambda S, e: S.reinforce_pp_advantages(R, eps=e),
        }.items()
        for bad in ("-1", "nan", "inf")
    },
}


class _JaxInputs:
    """``expectax.rl.sequence`` with every NumPy argument converted to a JAX array."""

    def __getattr__(self, name):
        fn = getattr(seq, name)

        def call(*args, **kwargs):
            def conv(v):
                return jnp.asarray(v) if isinstance(v, np.ndarray) else v

            return fn(*map(conv, args), **{k: conv(v) for k, v in kwargs.items()})

        return call


@pytest.mark.parametrize("inputs", ["numpy", "jax"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_the_argument(case, inputs):
    call, match = CASES[case]
    with pytest.raises(ValueError, match=match):
        call(seq if inputs == "numpy" else _JaxInputs())


def test_valid_edge_cases_still_work():
    """Not errors: K=1 without a group baseline, an empty completion under token sums,
    padding of any finite value ≤ 0, and a traced β / clip range (no value checks)."""
    import jax

    assert seq.reinforce_advantages(R[:, :1]).shape == (G, 1)
    # eps = 0 is allowed: a group of equal rewards gets zero advantages, not 0/0
    same = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], np.float32)
    adv0 = seq.grpo_advantages(same, eps=0.0)
    np.testing.assert_array_equal(adv0[0], 0.0)
    np.testing.assert_allclose(adv0[1], [-1.0, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(seq.reinforce_pp_advantages(np.ones((2, 3)), eps=0.0), 0.0)
    assert seq.remax_advantages(R[:, :1], np.zeros(G, np.float32)).shape == (G, 1)
    assert np.isfinite(seq.sequence_policy_loss(LP, ADV, EMPTY_SEQ))
    assert np.isfinite(seq.aggregate_loss(LOSS, EMPTY_SEQ, "token-mean"))
    beta_fn = jax.jit(lambda b: seq.kl_penalized_rewards(R, LP, REF, M, beta=b))
    assert beta_fn(0.1).shape == (G, K)
    clip_fn = jax.jit(
        lambda lp, c: seq.sequence_policy_loss(lp, ADV, M, old_logp_gkt=LP, clip_eps=c)
    )
    assert np.isfinite(clip_fn(jnp.asarray(LP), 0.2))


def test_advantages_dispatches_to_each_estimator():
    """``rl.sequence.advantages`` is each named estimator, and refuses an unknown name."""
    r = jnp.array([[1.0, 0.0, 2.0], [0.5, 0.5, 1.5]])
    greedy = jnp.array([1.0, 0.0])
    lengths = jnp.array([[1.0, 2.0, 3.0], [2.0, 2.0, 1.0]])
    expected = {
        "reinforce": seq.reinforce_advantages(r, 0.3),
        "rloo": seq.rloo_advantages(r),
        "grpo": seq.grpo_advantages(r),
        "dr-grpo": seq.dr_grpo_advantages(r),
        "reinforce++": seq.reinforce_pp_advantages(r),
        "reinforce++-baseline": seq.reinforce_pp_advantages(r, group_baseline=True),
        "remax": seq.remax_advantages(r, greedy),
        "opo": seq.opo_advantages(r, lengths),
        "james-stein": seq.james_stein_advantages(r),
    }
    assert set(expected) == set(seq.ADVANTAGE_ESTIMATORS)
    for name, want in expected.items():
        got = seq.advantages(name, r, baseline=0.3, greedy_rewards_g=greedy, lengths_gk=lengths)
        np.testing.assert_array_equal(got, want, err_msg=name)
    with pytest.raises(ValueError, match=r"advantages: unknown estimator 'ppo'; one of reinforce"):
        seq.advantages("ppo", r)
