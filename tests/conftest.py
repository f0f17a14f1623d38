"""Test harness.

DESIGN.md asks for ``jax_numpy_rank_promotion="raise"`` everywhere. numpyro's distributions
rely on implicit rank promotion internally (``loc + eps * scale`` with ``eps`` of shape
``(N, d)`` and ``scale`` of shape ``(d,)``), so the global setting would fail every numpyro
call. Instead, code of our own that does not call into numpyro runs under the ``strict_ranks``
fixture, which turns the check on for one test.

The suite is compile-bound (thousands of small programs, each run a few times), so the tests
compile with XLA's CPU backend optimisation off: the same programs and the same arithmetic,
compiled in about a third of the time (the whole suite: 6.5 instead of ~9.5 minutes on two
cores). Fused loops are emitted by XLA's older elemental emitter
(``--xla_cpu_use_fusion_emitters=false``), which compiles these small programs in about 60% of
the CPU time of the MLIR fusion emitters (tests/test_catalogue.py and test_errors.py: 83 s ->
52 s); where this jaxlib's XLA no longer knows that flag (an unknown flag in ``XLA_FLAGS``
aborts the process), a one-off subprocess finds out and the flag is left out. Set
``EXPECTAX_TEST_XLA_OPT=1`` to test with XLA's defaults instead. Benchmarks never run under
this file.

Triangular solves compile to XLA's own ``triangular_solve`` on the CPU, as JAX does for the
types LAPACK lacks, instead of jaxlib's LAPACK ``trsm`` kernel. jaxlib 0.10's LAPACK kernels
split a large batch into tasks on XLA's intra-op thread pool and block until they finish, from
inside a thread of that pool: when as many such kernels run at once as the pool has threads
(two on a two-core machine) every thread waits for tasks that no thread is left to run, and
the program never returns. tests/test_control_variates.py's jitted ``vmap(grad(E))`` of a
MultivariateNormal with the delta method (three ``trsm`` calls on batches of 128 2×2 systems
with 500 right-hand sides each) hung so in 2 of 4 full runs, and in every run of it alone
with XLA's default flags (gdb: both pool threads in ``ParallelBatchMap`` under
``lapack_strsm_ffi``). The test checks expectax's arithmetic, not jaxlib's thread pool, so the
suite routes around the bug; docs/getting-started.md says what users of jaxlib 0.10 can do.

Under pytest-xdist (``-n 2``) the tests are dealt to the workers one at a time, so a module's
tests land on both workers and its module-scoped fixtures and cached exact answers are
computed on each (one worker waited ~20 s for the other's 8-device subprocess).
``pytest_xdist_make_scheduler`` keeps the tests of ``ONE_WORKER_MODULES`` together on one
worker and deals every other test alone, as before.
"""

import os
import subprocess
import sys

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flag: str) -> bool:
    """Whether this jaxlib's XLA knows ``flag``, asked once per session: the answer is kept in
    the environment, which pytest-xdist's workers (and the tests' subprocesses) inherit."""
    name = "EXPECTAX_TEST_XLA_LEGACY_EMITTERS"
    if name not in os.environ:
        env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
        code = "import jax; jax.numpy.zeros(1).block_until_ready()"
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, timeout=120
            )
            os.environ[name] = "1" if proc.returncode == 0 else "0"
        except subprocess.TimeoutExpired:
            os.environ[name] = "0"
    return os.environ[name] == "1"


if os.environ.get("EXPECTAX_TEST_XLA_OPT") != "1":  # before jax is imported
    flags = FAST_COMPILE + (" " + LEGACY_EMITTERS if _xla_accepts(LEGACY_EMITTERS) else "")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from jax._src.interpreters import mlir as _mlir  # noqa: E402
from jax._src.lax import linalg as _linalg  # noqa: E402

# XLA's triangular solve on the CPU instead of jaxlib 0.10's LAPACK kernel (see above)
_mlir.register_lowering(
    _linalg.triangular_solve_p, _linalg._triangular_solve_lowering, platform="cpu"
)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def strict_ranks():
    """Raise on implicit rank promotion inside the test (for code that does not use numpyro)."""
    with jax.numpy_rank_promotion("raise"):
        yield


#: Modules whose module-scoped work is expensive (a subprocess with 8 devices, a training run,
#: a fixture of many estimates, exact answers cached per process): one worker runs each.
ONE_WORKER_MODULES = frozenset(
    {
        "test_baselines.py",
        "test_rl_errors.py",
        "test_rl_seq_demo.py",
        "test_rl_sequence.py",
        "test_rl_sharding.py",
        "test_sampling.py",
        "test_scan.py",
        "test_sequence_compare.py",
        "test_sharding.py",
        "test_svi.py",
        "test_vae.py",
    }
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``-n N`` (xdist's ``--dist load``): a module of ``ONE_WORKER_MODULES`` is one unit of
    work, every other test a unit of its own. xdist deals the largest units first, then the
    rest one at a time as workers free up."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return module if module.rsplit("/", 1)[-1] in ONE_WORKER_MODULES else nodeid

    return ModulesOnOneWorker(config, log)
