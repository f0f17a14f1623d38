"""expectax: Monte Carlo gradients of expectations in JAX.

``expectation(f, dist_fn, estimator=..., num_samples=...)`` turns
``J(θ) = E_{x~p_θ}[f_θ(x)]`` into a function whose value is a Monte Carlo estimate and whose
``jax.grad`` is the chosen estimator's gradient estimate; ``compare`` tells which estimator
suits your problem.
"""

from expectax import baselines, control_variates, diagnostics, problems, programs, sampling
from expectax.compare import Comparison, compare, compare_programs
from expectax.estimators import (
    ARM,
    REBAR,
    RELAX,
    VIMCO,
    DisARM,
    Estimator,
    GumbelSoftmax,
    MeasureValued,
    Pathwise,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
    UnorderedSet,
)
from expectax.expectation import debug_errors, expectation, per_sample_grads
from expectax.programs import program_expectation

__version__ = "0.1.0"

__all__ = [
    "ARM",
    "REBAR",
    "RELAX",
    "VIMCO",
    "DisARM",
    "GumbelSoftmax",
    "StraightThrough",
    "SumAndSample",
    "UnorderedSet",
    "Comparison",
    "Estimator",
    "MeasureValued",
    "Pathwise",
    "ScoreFunction",
    "baselines",
    "compare",
    "compare_programs",
    "control_variates",
    "debug_errors",
    "diagnostics",
    "expectation",
    "per_sample_grads",
    "problems",
    "program_expectation",
    "programs",
    "sampling",
]
