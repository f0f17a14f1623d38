"""expectax.rl.sequence under ``jax.jit`` (issue 19, item 6).

A check must never crash on a tracer: with the arrays closed over by the jitted function (the
way a training step captures a batch) the values are still known, so every value check still
runs and raises the same ``ValueError`` as outside ``jit``; with the arrays passed as jit
arguments they are tracers, the value checks are skipped and the function traces. Valid inputs
give the same numbers in all three ways.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_rl_sequence_errors import CASES, LP, REF, M, R

from expectax.rl import sequence as seq


class _ConcreteJaxInputs:
    """``expectax.rl.sequence`` with every NumPy argument a concrete JAX array, also when called
    inside ``jit`` (as if the jitted function had closed over JAX arrays)."""

    def __getattr__(self, name):
        fn = getattr(seq, name)

        def call(*args, **kwargs):
            def conv(v):
                if not isinstance(v, np.ndarray):
                    return v
                with jax.ensure_compile_time_eval():
                    return jnp.asarray(v)

            return fn(*map(conv, args), **{k: conv(v) for k, v in kwargs.items()})

        return call


@pytest.mark.parametrize("inputs", ["numpy", "jax"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_closed_over_under_jit_raises_the_same_error(case, inputs):
    call, match = CASES[case]
    S = seq if inputs == "numpy" else _ConcreteJaxInputs()
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda: call(S))()


VALID = {
    "reinforce": lambda r, lp, ref, m: seq.reinforce_advantages(r, 0.5),
    "rloo": lambda r, lp, ref, m: seq.rloo_advantages(r),
    "grpo": lambda r, lp, ref, m: seq.grpo_advantages(r),
    "dr-grpo": lambda r, lp, ref, m: seq.dr_grpo_advantages(r),
    "reinforce++": lambda r, lp, ref, m: seq.reinforce_pp_advantages(r, jnp.ones_like(r)),
    "remax": lambda r, lp, ref, m: seq.remax_advantages(r, r[:, 0]),
    "kl_estimate": lambda r, lp, ref, m: seq.kl_estimate(lp, ref, m),
    "kl_penalized_rewards": lambda r, lp, ref, m: seq.kl_penalized_rewards(r, lp, ref, m),
    **{
        f"kl_loss-{mode}": lambda r, lp, ref, m, mode=mode: seq.kl_loss(
            lp, ref, m, loss_agg_mode=mode
        )
        for mode in seq.LOSS_AGG_MODES
    },
    **{
        f"policy_loss-{mode}": lambda r, lp, ref, m, mode=mode: seq.sequence_policy_loss(
            lp, seq.rloo_advantages(r), m, old_logp_gkt=ref, clip_eps=0.2, loss_agg_mode=mode
        )
        for mode in seq.LOSS_AGG_MODES
    },
    "aggregate_loss": lambda r, lp, ref, m: seq.aggregate_loss(lp, m, "token-mean"),
}


@pytest.mark.parametrize("name", list(VALID))
def test_valid_input_same_value_eager_closed_over_and_traced(name):
    fn = VALID[name]
    args = tuple(map(jnp.asarray, (R, LP, REF, M)))
    eager = np.asarray(fn(*args))
    closed = np.asarray(jax.jit(lambda: fn(*args))())
    traced = np.asarray(jax.jit(fn)(*args))
    np.testing.assert_allclose(closed, eager, rtol=1e-6)
    np.testing.assert_allclose(traced, eager, rtol=1e-6)
    # NumPy closed over: no TracerArrayConversionError at the NumPy boundary either
    np_closed = jax.jit(lambda: fn(*map(np.asarray, args)))()
    np.testing.assert_allclose(np.asarray(np_closed), eager, rtol=1e-6)


def test_the_two_calls_of_the_issue():
    """The two reproductions of issue 19: TracerBoolConversionError before the fix."""
    lp, adv, r = -jnp.ones((1, 2, 3)), jnp.ones((1, 2)), jnp.ones((2, 3))
    assert float(jax.jit(lambda: seq.sequence_policy_loss(lp, adv))()) == pytest.approx(-3.0)
    np.testing.assert_array_equal(jax.jit(lambda: seq.rloo_advantages(r))(), 0.0)
    # a clip range closed over as a JAX scalar, and a gradient through the jitted loss
    c = jnp.asarray(0.2)
    g = jax.jit(
        jax.grad(lambda lp: seq.sequence_policy_loss(lp, adv, old_logp_gkt=lp, clip_eps=c))
    )(lp)
    np.testing.assert_allclose(g, -0.5)  # −A/N per token, N = 2 sequences
