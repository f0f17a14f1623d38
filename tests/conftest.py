"""Test harness.

DESIGN.md asks for ``jax_numpy_rank_promotion="raise"`` everywhere. numpyro's distributions
rely on implicit rank promotion internally (``loc + eps * scale`` with ``eps`` of shape
``(N, d)`` and ``scale`` of shape ``(d,)``), so the global setting would fail every numpyro
call. Instead, code of our own that does not call into numpyro runs under the ``strict_ranks``
fixture, which turns the check on for one test.

The suite is compile-bound (thousands of small programs, each run a few times), so the tests
compile with XLA's CPU backend optimisation off: the same programs and the same arithmetic,
compiled in about a third of the time (the whole suite: 6.5 instead of ~9.5 minutes on two
cores). Set ``EXPECTAX_TEST_XLA_OPT=1`` to test with XLA's default optimisation instead.
Benchmarks never run under this file.
"""

import os

if os.environ.get("EXPECTAX_TEST_XLA_OPT") != "1":  # before jax is imported
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def strict_ranks():
    """Raise on implicit rank promotion inside the test (for code that does not use numpyro)."""
    with jax.numpy_rank_promotion("raise"):
        yield
