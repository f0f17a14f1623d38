"""``compare`` on the sequence problems (issue 11, item 3): group-level variants as estimators.

One sample of the ``tiny-sequence`` problems is one group of K completions, and each variant
(:class:`expectax.problems.sequence.SequenceVariant`) returns the gradient of its loss on the
batch; compare measures bias against the exact gradient by enumeration. A variant biased for
the objective is marked and (here) significantly biased; the unbiased ones are within 5 SE and
the recommendation is one of them. Few variants and one comparison per module (each variant is
two compilations).
"""

import json
import textwrap

import jax
import numpy as np
import pytest

import expectax as ex
from expectax.cli import main
from expectax.problems import get_problem
from expectax.problems.sequence import SequenceVariant, unbiased_for_objective

UNBIASED = ("RLOO",)
BIASED = ("Dr. GRPO",)  # lower variance than RLOO: recommended if its bias were ignored


@pytest.fixture(scope="module")
def comparison():
    prob = get_problem("tiny-sequence")
    chosen = [e for e in prob.estimators if e.name in UNBIASED + BIASED]
    assert len(chosen) == 2
    return ex.compare(
        prob.f,
        prob.dist_fn,
        prob.params,
        chosen,
        num_samples=1,  # one group of K = 4 completions per estimate
        repeats=2000,
        exact_grad=prob.exact_grad,
        seed=0,
        time_budget=0.02,
    )


def test_unbiased_variants_within_5_se_biased_ones_marked_and_measured(comparison):
    res = comparison
    for name in UNBIASED:
        r = res.report(name)
        assert r.error is None and r.unbiased_by_design, name
        assert r.max_abs_z() < 5, (name, r.max_abs_z())
        assert r.evaluations == 4  # K rewards per group
    for name in BIASED:
        r = res.report(name)
        assert r.error is None and not r.unbiased_by_design, name
        assert r.max_abs_z() > res.bias_threshold, (name, r.max_abs_z())


def test_recommendation_is_an_unbiased_variant(comparison):
    assert comparison.recommended in UNBIASED
    assert comparison.report("Dr. GRPO").total_variance < comparison.report("RLOO").total_variance
    assert all(name in comparison.reason.split("not eligible:")[1] for name in BIASED)


def test_which_variants_are_unbiased_for_which_objective():
    assert unbiased_for_objective("rloo") and unbiased_for_objective("remax")
    assert not unbiased_for_objective("dr-grpo") and not unbiased_for_objective("grpo")
    assert not unbiased_for_objective("rloo", "token-mean")
    assert not unbiased_for_objective("rloo", kl="k1-reward", beta=0.5)  # objective E[R]
    assert unbiased_for_objective("rloo", kl="k1-reward", beta=0.5, objective_beta=0.5)
    assert unbiased_for_objective("rloo", kl="k2-seq-loss", beta=0.5, objective_beta=0.5)
    assert not unbiased_for_objective("rloo", kl="k3-loss", beta=0.5, objective_beta=0.5)
    assert not unbiased_for_objective("rloo", objective_beta=0.5)  # the KL ignored
    prob = get_problem("tiny-sequence-kl")
    names = [e.name for e in prob.estimators]
    assert len(set(names)) == len(names)
    p = np.exp(np.asarray(prob.dist_fn(prob.params).logits, np.float64))
    assert p.sum() == pytest.approx(1.0, abs=1e-5)  # a distribution over all 15 sequences


def test_variant_arguments_are_checked():
    pol = get_problem("tiny-sequence").estimators[0].policy
    with pytest.raises(ValueError, match=r"SequenceVariant\('x'\): kl must be one of none"):
        SequenceVariant(pol, "x", kl="k4-reward")
    with pytest.raises(ValueError, match=r"advantage='rloo' uses the group, so k must be ≥ 2"):
        SequenceVariant(pol, "x", k=1)
    with pytest.raises(ValueError, match=r"tiny_sequence: k \(completions per group\)"):
        get_problem("tiny-sequence", k=1)
    prob = get_problem("tiny-sequence")
    remax = [e for e in prob.estimators if e.name == "ReMax"][0]
    assert remax.evaluations(3) == 3 * 5  # K rewards and one greedy completion per group
    with pytest.raises(ValueError, match=r"per-sample gradients are not defined"):
        ex.per_sample_grads(
            prob.f,
            prob.dist_fn,
            prob.params,
            jax.random.key(0),
            estimator=prob.estimators[2],
            num_samples=2,
        )


def test_cli_json_on_the_kl_problem(tmp_path, capsys):
    """A problem file picks options (here β via tiny-sequence-kl) and a subset of variants."""
    path = tmp_path / "seq_problem.py"
    path.write_text(
        textwrap.dedent(
            """
            import dataclasses
            from expectax.problems import get_problem

            def problem():
                prob = get_problem("tiny-sequence-kl")
                keep = ("RLOO + k1 reward", "RLOO + k3 token loss")
                return dataclasses.replace(
                    prob, estimators=tuple(e for e in prob.estimators if e.name in keep)
                )
            """
        )
    )
    argv = ["compare", "--problem", f"{path}:problem", "--num-samples", "1"]
    assert main([*argv, "--repeats", "2000", "--seed", "0", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert "0.5·KL(π‖π_ref)" in payload["description"]
    rows = {row["name"]: row for row in payload["estimators"]}
    good, bad = rows["RLOO + k1 reward"], rows["RLOO + k3 token loss"]
    assert good["unbiased_by_design"] and max(map(abs, good["bias_z"])) < 5
    assert not bad["unbiased_by_design"]
    assert np.max(np.abs(bad["bias_z"])) > payload["bias_threshold_z"]
    assert payload["recommended"] == "RLOO + k1 reward"
