"""``compare`` on the off-policy sequence problems (issue 19, item 2): a rollout engine μ ≠ π.

``tiny-sequence-offpolicy`` (and ``-kl``) sample each group from the rollout engine's
``μ = θ + δ·u`` while the trainer's loss is taken at θ, with the off-policy corrections as
variants. Each variant's ``unbiased`` flag (:func:`unbiased_for_objective`) is checked against
the exact expected gradient by enumerating every batch (:func:`exact_gradient_moments`, one
group of K = 2: 225 batches), for the registered variants and for a grid of losses,
corrections and KL terms; one short ``compare`` run checks that the flags and the measured
bias agree on the command line too.
"""

import json

import numpy as np
import pytest

from expectax.cli import main
from expectax.problems import get_problem
from expectax.problems.sequence import (
    CORRECTIONS,
    POLICY_LOSSES,
    SequenceVariant,
    TinySequencePolicy,
    exact_gradient_moments,
    gradient_samples,
    unbiased_for_objective,
)

EXACT = 1e-4  # relative bias below this is float rounding (the unbiased ones are ~1e-7)


def exact_relative_bias(policy, theta, variants, target, mismatch, k=2):
    mu = policy.behaviour_params(theta, mismatch)
    out = exact_gradient_moments(
        policy, theta, policy.init_params("reference"), k, variants=variants, theta_behaviour=mu
    )
    return np.linalg.norm(out["mean"] - target, axis=-1) / np.linalg.norm(target)


def target_of(policy, theta, beta):
    g = policy.exact_grads(theta, policy.init_params("reference"))
    return np.asarray(g["reward"] - beta * g["kl"], np.float64).ravel()


@pytest.mark.parametrize(
    "name, beta", [("tiny-sequence-offpolicy", 0.0), ("tiny-sequence-offpolicy-kl", 0.5)]
)
def test_registered_variants_flags_agree_with_the_exact_bias(name, beta):
    prob = get_problem(name, k=2)
    est = prob.estimators
    assert len({e.name for e in est}) == len(est)
    assert any(e.unbiased for e in est) and not all(e.unbiased for e in est)
    pol, theta = est[0].policy, prob.params["logits"]
    target = np.asarray(prob.exact_grad(prob.params)["logits"], np.float64).ravel()
    np.testing.assert_allclose(target, target_of(pol, theta, beta), rtol=1e-6, atol=1e-7)
    rel = exact_relative_bias(pol, theta, [e.loss_options for e in est], target, 1.0)
    for e, r in zip(est, rel, strict=True):
        assert e.mismatch == 1.0 and e.objective_beta == beta
        assert e.unbiased == (r < EXACT), (e.name, e.unbiased, r)
        if not e.unbiased:
            assert r > 0.2, (e.name, r)  # biased by 20 % of ‖∇J‖ or more at δ = 1
    assert "max π/μ = 8.63" in prob.description and "C = 2" in prob.description


def grid(beta):
    """(options, mismatch) of many variants: every loss × correction, KL terms, advantages."""
    out = []
    if beta == 0:
        for corr in CORRECTIONS:
            out.append(dict(advantage="rloo", correction=corr))
        for loss in POLICY_LOSSES:
            for corr in (None, "token-truncate", "sequence-is", "sequence-truncate"):
                if loss == "vespo" and corr is not None:
                    continue  # refused: vespo's weight is the rollout ratio itself
                out.append(dict(advantage="rloo", loss=loss, correction=corr))
        out.append(dict(advantage="rloo", loss="gspo", loss_agg_mode="seq-mean-token-mean"))
        out.append(dict(advantage="rloo", correction="sequence-truncate", threshold=np.inf))
        out.append(dict(advantage="rloo", correction="sequence-mask", threshold=np.inf))
        out.append(dict(advantage="rloo", correction="token-truncate", threshold=np.inf))
        for adv in ("reinforce", "remax", "grpo", "dr-grpo", "reinforce++"):
            out.append(dict(advantage=adv, correction="sequence-is"))
        for agg in ("token-mean", "seq-mean-token-mean"):
            out.append(dict(advantage="rloo", correction="sequence-is", loss_agg_mode=agg))
        out.append(dict(advantage="reinforce", baseline=0.7, correction="sequence-is"))
    else:
        from expectax.problems.sequence import KL_MODES

        for kl in KL_MODES:
            for corr in (None, "sequence-is", "token-truncate"):
                out.append(dict(advantage="rloo", kl=kl, beta=beta, correction=corr))
        out.append(dict(advantage="rloo", kl="k1-reward", beta=0.2, correction="sequence-is"))
    return out


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_unbiased_for_objective_agrees_with_exact_moments_on_a_grid(beta):
    pol = TinySequencePolicy()
    theta = pol.init_params()
    variants = grid(beta)
    target = target_of(pol, theta, beta)
    for mismatch in (0.0, 1.0):
        rel = exact_relative_bias(pol, theta, variants, target, mismatch)
        wrong = [
            (v, float(r))
            for v, r in zip(variants, rel, strict=True)
            if unbiased_for_objective(**_flag_args(v), objective_beta=beta, mismatch=mismatch)
            != (r < EXACT)
        ]
        assert not wrong, (mismatch, wrong)


def _flag_args(v):
    v = dict(v)
    v.pop("baseline", None)
    return v


def test_sequence_truncation_is_exact_until_the_threshold_bites():
    """Flagged biased by design (biased for some θ), exact where no ratio π/μ reaches C."""
    pol = TinySequencePolicy()
    theta = pol.init_params()
    lp, lq = pol.seq_logp(theta), pol.seq_logp(pol.behaviour_params(theta, 0.3))
    assert float(np.exp(np.max(lp - lq))) < 2.0  # C = 2 never bites at δ = 0.3
    variants = [dict(correction="sequence-truncate"), dict(correction="sequence-mask")]
    rel = exact_relative_bias(pol, theta, variants, target_of(pol, theta, 0.0), 0.3)
    assert np.all(rel < EXACT), rel
    for v in variants:
        assert not unbiased_for_objective("rloo", mismatch=0.3, **v)


def test_gradient_samples_from_the_rollout_engine_match_the_exact_mean():
    pol = TinySequencePolicy()
    theta, ref = pol.init_params(), pol.init_params("reference")
    mu = pol.behaviour_params(theta, 1.0)
    variants = [dict(correction="sequence-is"), dict(correction="token-truncate")]
    import jax

    g = gradient_samples(
        pol, theta, ref, jax.random.key(0), 4000, k=2, variants=variants, theta_behaviour=mu
    )
    exact = exact_gradient_moments(pol, theta, ref, 2, variants=variants, theta_behaviour=mu)
    se = g.std(axis=1, ddof=1) / np.sqrt(g.shape[1])
    z = np.abs(g.mean(axis=1) - exact["mean"]) / np.maximum(se, 1e-12)
    assert np.max(z) < 5.0, np.max(z, axis=-1)


def test_variant_checks_its_off_policy_options():
    pol = TinySequencePolicy()
    with pytest.raises(ValueError, match=r"SequenceVariant\('x'\): loss must be one of ppo"):
        SequenceVariant(pol, "x", loss="grpo")
    with pytest.raises(ValueError, match=r"correction must be None or one of token-is"):
        SequenceVariant(pol, "x", correction="sequence-tis")
    with pytest.raises(ValueError, match=r"mismatch \(the rollout engine's logit error δ\)"):
        SequenceVariant(pol, "x", mismatch=-1.0)
    with pytest.raises(ValueError, match=r"threshold must be a number > 0"):
        SequenceVariant(pol, "x", threshold=0.0)
    with pytest.raises(ValueError, match=r"tiny_sequence_offpolicy: mismatch must be"):
        get_problem("tiny-sequence-offpolicy", mismatch=0.0)


def test_cli_marks_the_biased_corrections(capsys):
    """One short compare run: sequence IS unbiased (within 5 SE), token TIS flagged and measured."""
    import dataclasses

    from expectax import problems

    def small():
        prob = get_problem("tiny-sequence-offpolicy")
        keep = ("RLOO + sequence IS", "RLOO + token TIS C=2")
        return dataclasses.replace(
            prob, estimators=tuple(e for e in prob.estimators if e.name in keep)
        )

    problems.register_problem("test-offpolicy-small", small, overwrite=True)
    try:
        argv = ["compare", "--problem", "test-offpolicy-small", "--num-samples", "1"]
        assert main([*argv, "--repeats", "2000", "--seed", "0", "--json"]) == 0
    finally:
        problems._REGISTRY.pop("test-offpolicy-small", None)
    payload = json.loads(capsys.readouterr().out)
    assert "rollout engine μ = θ + 1·u" in payload["description"]
    rows = {row["name"]: row for row in payload["estimators"]}
    good, bad = rows["RLOO + sequence IS"], rows["RLOO + token TIS C=2"]
    assert good["unbiased_by_design"] and max(map(abs, good["bias_z"])) < 5
    assert not bad["unbiased_by_design"]
    assert np.max(np.abs(bad["bias_z"])) > payload["bias_threshold_z"]
    assert payload["recommended"] == "RLOO + sequence IS"
