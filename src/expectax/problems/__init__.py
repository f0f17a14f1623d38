"""Reference problems with exact answers, for tests, ``compare`` and the command line.

A :class:`Problem` bundles ``f(params, x)``, ``dist_fn(params)``, default ``params``, the exact
value ``J(θ) = E_{x~p_θ}[f_θ(x)]`` and its exact gradient ``∇θ J`` (closed form or
enumeration), and the estimators that suit it. Problems are looked up by name::

    >>> import expectax.problems as problems
    >>> prob = problems.get_problem("gaussian-quadratic")
    >>> prob.exact_grad(prob.params)            # {"mu": 2(μ − k), "sigma": 2σ}

Built-in problems: the Gaussian test functions of Mohamed et al. (2020) (``gaussian-quadratic``
— the default of ``expectax compare`` —, ``gaussian-quadratic-theta``, ``gaussian-exp``,
``gaussian-cos``), a multivariate Gaussian quadratic form (``mvn-quadratic``), and small
discrete problems solved by enumeration (``bernoulli``, ``categorical``). Other modules add
theirs with :func:`register_problem`.

References:
  Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
  learning", JMLR 21(132), section 3 and figure 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable
from typing import Any

__all__ = [
    "Problem",
    "bernoulli",
    "categorical",
    "gaussian_cos",
    "gaussian_exp",
    "gaussian_quadratic",
    "gaussian_quadratic_theta",
    "get_problem",
    "list_problems",
    "mvn_quadratic",
    "register_problem",
]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """A Monte Carlo gradient problem ``∇θ E_{x~p_θ}[f_θ(x)]`` with (optionally) exact answers.

    Attributes:
      name: the registry name, e.g. ``"gaussian-quadratic"``.
      description: one line for tables and ``--help``, with the formula.
      f: ``f(params, x) -> scalar`` for one sample ``x`` (may ignore ``params``).
      dist_fn: ``dist_fn(params) -> distribution`` (a numpyro distribution).
      params: the default parameters θ, a pytree of float arrays.
      exact_value: ``exact_value(params) -> scalar``, the exact ``J(θ)``, or ``None``.
      exact_grad: ``exact_grad(params) -> pytree like params``, the exact ``∇θ J``, or ``None``.
      estimators: the estimators ``compare`` uses by default on this problem.
    """

    name: str
    description: str
    f: Callable[[PyTree, Any], Any]
    dist_fn: Callable[[PyTree], Any]
    params: PyTree
    exact_value: Callable[[PyTree], Any] | None = None
    exact_grad: Callable[[PyTree], PyTree] | None = None
    estimators: tuple = ()


_REGISTRY: dict[str, Callable[..., Problem]] = {}


def register_problem(
    name: str, factory: Callable[..., Problem], *, overwrite: bool = False
) -> None:
    """Make ``get_problem(name, **kwargs)`` return ``factory(**kwargs)``.

    Args:
      name: the registry name (lower case, words joined by ``-``).
      factory: a function of keyword arguments with defaults returning a :class:`Problem`.
      overwrite: allow replacing an existing entry (otherwise a ``ValueError``).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_problem: name must be a non-empty string, got {name!r}.")
    if not callable(factory):
        raise TypeError(
            f"register_problem: factory must be a function returning a Problem, got "
            f"{type(factory).__name__}."
        )
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not factory:
        raise ValueError(
            f"register_problem: a problem named {name!r} is already registered; pick another "
            "name or pass overwrite=True."
        )
    _REGISTRY[name] = factory


def list_problems() -> list[str]:
    """The names of all registered problems, sorted."""
    return sorted(_REGISTRY)


def get_problem(name: str, **kwargs: Any) -> Problem:
    """The registered problem ``name``, built with ``kwargs`` passed to its factory.

    Raises:
      ValueError: for an unknown name, listing the valid names and the closest matches.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"Unknown problem {name!r}.{hint} Valid names: {', '.join(list_problems())}."
        )
    return _REGISTRY[name](**kwargs)


from expectax.problems.discrete import bernoulli, categorical  # noqa: E402
from expectax.problems.gaussian import (  # noqa: E402
    gaussian_cos,
    gaussian_exp,
    gaussian_quadratic,
    gaussian_quadratic_theta,
    mvn_quadratic,
)

register_problem("gaussian-quadratic", gaussian_quadratic)
register_problem("gaussian-quadratic-theta", gaussian_quadratic_theta)
register_problem("gaussian-exp", gaussian_exp)
register_problem("gaussian-cos", gaussian_cos)
register_problem("mvn-quadratic", mvn_quadratic)
register_problem("bernoulli", bernoulli)
register_problem("categorical", categorical)

try:  # problems contributed by expectax.problems.discrete_toys, when that module exists
    importlib.import_module("expectax.problems.discrete_toys")
except ModuleNotFoundError as _err:
    if _err.name != "expectax.problems.discrete_toys":
        raise

from expectax.problems.sequence import (  # noqa: E402
    tiny_sequence,
    tiny_sequence_kl,
    tiny_sequence_offpolicy,
    tiny_sequence_offpolicy_kl,
)

register_problem("tiny-sequence", tiny_sequence)
register_problem("tiny-sequence-kl", tiny_sequence_kl)
register_problem("tiny-sequence-offpolicy", tiny_sequence_offpolicy)
register_problem("tiny-sequence-offpolicy-kl", tiny_sequence_offpolicy_kl)
