"""Test harness.

DESIGN.md asks for ``jax_numpy_rank_promotion="raise"`` everywhere. numpyro's distributions
rely on implicit rank promotion internally (``loc + eps * scale`` with ``eps`` of shape
``(N, d)`` and ``scale`` of shape ``(d,)``), so the global setting would fail every numpyro
call. Instead, code of our own that does not call into numpyro runs under the ``strict_ranks``
fixture, which turns the check on for one test.
"""

import jax
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def strict_ranks():
    """Raise on implicit rank promotion inside the test (for code that does not use numpyro)."""
    with jax.numpy_rank_promotion("raise"):
        yield
