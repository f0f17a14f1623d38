"""CI: the library works with only its core dependencies (jax, numpyro, numpy).

Run by ``.ci/run`` with the Python of a fresh virtual environment where ``pip install .`` (no
extras) installed expectax. Fails (exit 1, one line per problem) if a package of the ``apps``
extra got installed, if a public module does not import, if importing the core loaded an
application package, or if a short gradient estimate or a numpyro SVI step with
``expectax.infer.TraceGraph_ELBO`` does not run. Also checks that the ``expectax`` command says
in one line what to install, with exit status 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

#: The apps extra's packages, which the core never imports. (scipy is left out: jax itself
#: depends on it, so it is always installed; the core imports it only for ``qmc=True``.)
APPS = ("gymnasium", "sklearn", "matplotlib", "rich", "optax", "equinox")

PUBLIC = (
    "expectax",
    "expectax.baselines",
    "expectax.control_variates",
    "expectax.diagnostics",
    "expectax.estimators",
    "expectax.expectation",
    "expectax.programs",
    "expectax.compare",
    "expectax.sampling",
    "expectax.sharding",
    "expectax.problems",
    "expectax.infer",
    "expectax.rl",
    "expectax.rl.sequence",
    "expectax.rl.vocab",
    "expectax.rl.losses",
    "expectax.rl.policies",
    "expectax.rl.cartpole",
    "expectax.compat",
    "expectax.compat.optax_monte_carlo",
    "expectax.vi",
)


def main() -> int:
    problems = []
    installed = [name for name in APPS if importlib.util.find_spec(name) is not None]
    if installed:
        problems.append(f"pip install . installed packages of the apps extra: {installed}")
    for name in PUBLIC:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - report every failure, one line each
            problems.append(f"import {name} failed: {type(err).__name__}: {err}")
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(APPS))
    if loaded:
        problems.append(f"importing the core loaded application packages: {loaded}")
    try:
        _estimate_and_elbo_step()
    except Exception as err:  # noqa: BLE001
        problems.append(f"the estimate or the ELBO step failed: {type(err).__name__}: {err}")
    problems += _command_says_what_to_install()
    for problem in problems:
        print(f"core-only: {problem}", file=sys.stderr)
    if not problems:
        print("core-only: OK (jax, numpyro, numpy only; every public module imports)")
    return 1 if problems else 0


def _estimate_and_elbo_step() -> None:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI
    from numpyro.optim import Adam

    import expectax as ex
    from expectax.compat import optax_monte_carlo as mc
    from expectax.infer import TraceGraph_ELBO
    from expectax.rl import sequence

    def f(params, x):
        return (x - 3.0) ** 2

    def dist_fn(params):
        return dist.Normal(params["mu"], 1.0)

    params = {"mu": jnp.array(0.5)}
    for estimator in (ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut()), ex.Pathwise()):
        E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=64)
        grad = jax.grad(E)(params, jax.random.key(0))["mu"]
        assert jnp.isfinite(grad) and -8.0 < float(grad) < -2.0, (estimator, grad)  # exact -5
    jac = mc.score_function_jacobians(
        lambda x: jnp.sum(x**2),
        [jnp.zeros(2), jnp.zeros(2)],
        lambda mean, log_scale: mc.multi_normal(mean, log_scale),
        jax.random.key(1),
        8,
    )
    assert jac[0].shape == (8, 2)
    adv = sequence.rloo_advantages(jnp.array([[1.0, 0.0, 1.0, 0.0]]))
    assert adv.shape == (1, 4)

    def model(x):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
        numpyro.sample("z", dist.Bernoulli(p))

    svi = SVI(model, guide, Adam(0.05), TraceGraph_ELBO(num_particles=4))
    state = svi.init(jax.random.key(2), 1.0)
    state, loss = svi.update(state, 1.0)
    assert jnp.isfinite(loss), loss


def _command_says_what_to_install() -> list[str]:
    exe = str(Path(sys.executable).with_name("expectax"))
    if not Path(exe).exists():
        exe = shutil.which("expectax") or "expectax"
    proc = subprocess.run([exe, "compare"], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    ok = proc.returncode == 2 and len(lines) == 1 and 'pip install "expectax[apps]"' in lines[0]
    if ok:
        return []
    return [
        f"`expectax compare` without the apps extra should print one line naming "
        f'pip install "expectax[apps]" and exit 2; got status {proc.returncode}, '
        f"stderr {proc.stderr.strip()[:300]!r}"
    ]


if __name__ == "__main__":
    sys.exit(main())
