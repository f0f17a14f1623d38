"""Compatibility layers for code written against other libraries' Monte Carlo APIs.

- :mod:`expectax.compat.optax_monte_carlo`: the functions of the removed
  ``optax.monte_carlo`` module (and ``optax._src.utils.multi_normal``), built on expectax's
  estimators. Replace ``from optax import monte_carlo`` with
  ``import expectax.compat.optax_monte_carlo as monte_carlo``.

Nothing in expectax imports this package; it imports expectax.
"""

from expectax.compat import optax_monte_carlo

__all__ = ["optax_monte_carlo"]
