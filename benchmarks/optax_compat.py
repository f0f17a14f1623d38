"""expectax.compat.optax_monte_carlo against optax 0.2.6's monte_carlo, in the same process.

Needs optax 0.2.6 (the last release with ``optax.monte_carlo``) next to expectax, in a
separate environment so that the library never depends on it::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e . "optax==0.2.6" scikit-learn   # or: pip install -e ".[bench]"
    .venv-bench/bin/python benchmarks/optax_compat.py            # --quick for a smoke run

Three implementations of each per-sample Jacobian, all ``jax.jit``-compiled with the
function, builder and sample count static:

- ``optax``: ``optax.monte_carlo`` 0.2.6 (``jax.jacfwd`` for score function and pathwise);
- ``compat``: ``expectax.compat.optax_monte_carlo`` (``expectax.per_sample_grads``);
- ``floor``: a hand-written jitted version for the diagonal Gaussian (analytic score,
  ``vmap(grad(f))`` for pathwise, the coupled weak-derivative pairs for measure-valued).

Cases: (a) the diagonal-Gaussian test functions of Mohamed et al. (2020) in 100 dimensions;
(b) the Bayesian-logistic-regression expected log joint with 50 samples, on scikit-learn's
breast-cancer data (30 features + bias = 31 weights) and a synthetic 2000-weight problem.

Time: in each repeat the three implementations run one after the other (interleaved, so load
on a shared machine hits them alike), each a loop of calls long enough to time (about 20 ms,
at least one call); a row reports the median over repeats of each time and of the per-repeat
ratios, with the ratios' range over repeats. ``--clock cpu`` times the process's CPU time
instead of wall time (steadier on a loaded machine, where wall time includes waiting for a
core). Memory is XLA's compiled ``temp + output`` bytes (``memory_analysis()``), the peak
working memory of one call beyond its inputs.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import expectax.compat.optax_monte_carlo as compat

try:
    from optax import monte_carlo as omc
    from optax._src import utils as optax_utils
except ImportError as err:  # pragma: no cover
    raise SystemExit(
        "This benchmark needs optax 0.2.6 (pip install 'optax==0.2.6'), the last release with "
        f"optax.monte_carlo: {err}"
    ) from err

warnings.filterwarnings("ignore", category=DeprecationWarning)

ESTIMATORS = ("score_function", "pathwise", "measure_valued")


# --------------------------------------------------------------------------- floors


def floor_jacobians(name: str, f: Callable, n: int) -> Callable:
    """Hand-written per-sample Jacobians for multi_normal(mean, log_scale)."""

    def score_function(params, key):
        mean, log_scale = params
        sigma = jnp.exp(log_scale)
        eps = jax.random.normal(key, (n, *mean.shape))
        fx = jax.vmap(f)(eps * sigma + mean)[:, None]
        return [fx * eps / sigma, fx * (eps**2 - 1.0)]

    def pathwise(params, key):
        mean, log_scale = params
        sigma = jnp.exp(log_scale)
        eps = jax.random.normal(key, (n, *mean.shape))
        g = jax.vmap(jax.grad(f))(eps * sigma + mean)
        return [g, g * eps * sigma]

    def measure_valued(params, key):
        mean, log_scale = params
        sigma = jnp.exp(log_scale)
        d = mean.shape[0]
        kx, kw, km, ku = jax.random.split(key, 4)
        x = mean + sigma * jax.random.normal(kx, (n, d))
        w = jax.random.weibull_min(kw, math.sqrt(2.0), 2.0, (n, d))
        m = jax.random.double_sided_maxwell(km, 0.0, 1.0, (n, d))
        e = jax.random.uniform(ku, (n, d)) * m
        eye = jnp.eye(d, dtype=bool)

        def one(args):  # one sample: f at its 4 D perturbed copies (coordinate j replaced)
            xi, mp, mm, sp, sm = args

            def at(v):
                return jax.vmap(f)(jnp.where(eye, v[:, None], xi[None, :]))

            return at(mp) - at(mm), at(sp) - at(sm)

        # lax.map over samples, not vmap: the samples and pair values are computed once before
        # the loop (under vmap XLA fuses their sampling transforms, erf_inv, log, pow, into the
        # select that builds the points and redoes them for each of the D copies).
        g_mean, g_scale = jax.lax.map(
            one,
            (x, mean + sigma * w, mean - sigma * w, mean + sigma * m, mean + sigma * e),
            batch_size=max(1, min(n // 2, 2**18 // (4 * d * d))),
        )
        g_mean = g_mean / (math.sqrt(2 * math.pi) * sigma)
        g_scale = g_scale / sigma
        return [g_mean, g_scale * sigma]

    return {
        "score_function": score_function,
        "pathwise": pathwise,
        "measure_valued": measure_valued,
    }[name]


# --------------------------------------------------------------------------- problems


def gaussian_test_functions(dim: int) -> dict[str, Callable]:
    """Mohamed et al. (2020), section 3: quadratic, exponentiated quadratic, cosine."""
    k = 0.5
    return {
        f"quadratic D={dim}": lambda x: jnp.sum((x - k) ** 2),
        f"exp-quadratic D={dim}": lambda x: jnp.exp(-k * jnp.sum(x**2)),
        f"cosine D={dim}": lambda x: jnp.sum(jnp.cos(k * x)),
    }


def logistic_log_joint(features: np.ndarray, labels: np.ndarray) -> Callable:
    """log N(w; 0, I) + Σ_n log σ(y_n x_nᵀ w), y ∈ {−1, +1}, x with a bias column."""
    xs = jnp.asarray(np.hstack([features, np.ones((features.shape[0], 1))]), jnp.float32)
    ys = jnp.asarray(2.0 * labels - 1.0, jnp.float32)

    def f(w):
        return -0.5 * jnp.sum(w**2) + jnp.sum(jax.nn.log_sigmoid(ys * (xs @ w)))

    return f


def breast_cancer() -> Callable:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    return logistic_log_joint(x, data.target.astype(np.float64))


def synthetic(dim: int, n: int, seed: int = 0) -> Callable:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim - 1)) / math.sqrt(dim)
    w = rng.normal(size=dim - 1)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w))).astype(np.float64)
    return logistic_log_joint(x, y)


# --------------------------------------------------------------------------- measurement


def compiled(fn: Callable, params, key):
    lowered = jax.jit(fn).lower(params, key)
    exe = lowered.compile()
    mem = exe.memory_analysis()
    nbytes = None if mem is None else int(mem.temp_size_in_bytes + mem.output_size_in_bytes)
    return exe, nbytes


def time_loop(exe, params, key, inner: int, clock: Callable[[], float]) -> float:
    """Seconds per call of ``inner`` back-to-back calls (after one untimed call)."""
    jax.block_until_ready(exe(params, key))
    t0 = clock()
    for _ in range(inner):
        out = exe(params, key)
    jax.block_until_ready(out)
    return (clock() - t0) / inner


def bench_case(
    label: str, f: Callable, dim: int, n: int, names, repeats: int, clock: Callable[[], float]
) -> list[dict]:
    params = [jnp.full((dim,), 0.1, jnp.float32), jnp.full((dim,), -1.0, jnp.float32)]
    key = jax.random.PRNGKey(0)
    rows = []
    for name in names:
        impls = {
            "optax": lambda p, k, name=name: getattr(omc, f"{name}_jacobians")(
                f, p, optax_utils.multi_normal, k, n
            ),
            "compat": lambda p, k, name=name: getattr(compat, f"{name}_jacobians")(
                f, p, compat.multi_normal, k, n
            ),
            "floor": floor_jacobians(name, f, n),
        }
        exes, mems = {}, {}
        for impl, fn in impls.items():
            exes[impl], mems[impl] = compiled(fn, params, key)
            jax.block_until_ready(exes[impl](params, key))  # warm up
        inner = {}  # calls per timed loop: ~20 ms of each implementation's wall time
        for impl, exe in exes.items():
            t0 = time.perf_counter()
            jax.block_until_ready(exe(params, key))
            inner[impl] = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
        times = {k: [] for k in impls}
        for r in range(repeats):
            k = jax.random.fold_in(key, r)
            for impl in impls:
                times[impl].append(time_loop(exes[impl], params, k, inner[impl], clock))
        times = {i: np.asarray(t) for i, t in times.items()}
        # same key → same mean gradient up to Monte Carlo error (a sanity check, not a test)
        means = {i: [np.asarray(j).mean(0) for j in exes[i](params, key)] for i in impls}
        rows.append(
            dict(
                case=label,
                estimator=name,
                t_optax=float(np.median(times["optax"])),
                t_compat=float(np.median(times["compat"])),
                t_floor=float(np.median(times["floor"])),
                speed_up=spread(times["optax"] / times["compat"]),
                vs_floor=spread(times["compat"] / times["floor"]),
                m_optax=mems["optax"],
                m_compat=mems["compat"],
                m_floor=mems["floor"],
                agree=float(
                    max(
                        np.max(np.abs(a - b))
                        for a, b in zip(means["optax"], means["compat"], strict=True)
                    )
                ),
            )
        )
        print(fmt_row(rows[-1]), flush=True)
    return rows


def spread(ratios: np.ndarray) -> tuple[float, float, float]:
    """(median, min, max) of per-repeat ratios."""
    return float(np.median(ratios)), float(np.min(ratios)), float(np.max(ratios))


def ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def fmt_spread(s: tuple[float, float, float]) -> str:
    return f"{s[0]:.2f} [{s[1]:.2f}-{s[2]:.2f}]"


HEADER = (
    f"{'case':<26} {'estimator':<15} {'optax ms':>9} {'compat ms':>9} {'floor ms':>9} "
    f"{'speed-up [range]':>20} {'vs floor [range]':>18} {'mem optax/compat':>16} "
    f"{'mem compat/floor':>16}"
)


def fmt_row(r: dict) -> str:
    return (
        f"{r['case']:<26} {r['estimator']:<15} {1e3 * r['t_optax']:9.2f} "
        f"{1e3 * r['t_compat']:9.2f} {1e3 * r['t_floor']:9.2f} "
        f"{fmt_spread(r['speed_up']):>20} {fmt_spread(r['vs_floor']):>18} "
        f"{ratio(r['m_optax'], r['m_compat']):>16} {ratio(r['m_compat'], r['m_floor']):>16}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--repeats", type=int, default=11, help="interleaved repeats (odd)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="wall time or process CPU time"
    )
    parser.add_argument("--samples", type=int, default=50, help="samples for case (b)")
    parser.add_argument("--big-dim", type=int, default=2000, help="weights, synthetic (b)")
    parser.add_argument("--big-data", type=int, default=100, help="data points, synthetic (b)")
    parser.add_argument(
        "--skip-big-mv", action="store_true", help="skip measure-valued on the synthetic problem"
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    dim_a = 10 if args.quick else 100
    big = 200 if args.quick else args.big_dim
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; median of {repeats} interleaved "
        f"repeats, {args.clock} clock"
    )
    print(HEADER)
    rows = []
    for label, f in gaussian_test_functions(dim_a).items():
        rows += bench_case(label, f, dim_a, 100, ESTIMATORS, repeats, clock)
    rows += bench_case(
        "BLR breast cancer D=31", breast_cancer(), 31, args.samples, ESTIMATORS, repeats, clock
    )
    names = ESTIMATORS[:2] if args.skip_big_mv else ESTIMATORS
    rows += bench_case(
        f"BLR synthetic D={big}",
        synthetic(big, args.big_data),
        big,
        args.samples,
        names,
        max(3, repeats // 3),
        clock,
    )
    print("\nspeed-up = optax time / compat time; vs floor = compat time / floor time; both the")
    print("median of the per-repeat ratios, [the range over repeats];")
    print("memory = XLA temp + output bytes of the compiled call.")
    print(f"largest |mean(optax) − mean(compat)| per row: {[round(r['agree'], 4) for r in rows]}")


if __name__ == "__main__":
    main()
