"""Samples over devices (``mesh=``/``axis_name=``) and over processes (``jax.distributed``).

The test process has already initialised JAX with one CPU device, so the multi-device checks
run in one subprocess with ``--xla_force_host_platform_device_count=8`` (set before jax is
imported), and the multi-host check in two processes on localhost that meet through
``jax.distributed.initialize`` and CPU collectives (gloo). Each returns its numbers as JSON;
the assertions are here. The claim checked: for a key, the result with the samples split over
1, 2 or 8 devices (or 2 processes) is the single-device result with the same ``chunk_size``:
the value bitwise, gradients and per-sample gradients to float tolerance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import once_per_session
from jax.sharding import Mesh

import expectax as ex
from expectax import baselines
from expectax.infer import IWELBO, TraceGraph_ELBO

RTOL = 1e-6

COMMON = """
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
import numpyro.distributions as dist
import expectax as ex
from expectax import baselines

def f(p, x):
    return jnp.sum(jnp.tanh(p["w"] * x)) + x ** 2

def dist_fn(p):
    return dist.Normal(p["mu"], jnp.exp(p["log_s"]))

PARAMS = {"w": jnp.linspace(0.1, 1.0, 6), "mu": jnp.array(0.3), "log_s": jnp.array(-0.2)}
KEY = jax.random.key(7)

def tolist(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a).tolist(), tree)
"""

# One joint estimate split over devices (VIMCO, UnorderedSet, SumAndSample), particles of
# programs and ELBOs, compare's repeats: each against mesh=None (the same key, no chunks).
JOINT = """
import numpyro
import numpyro.infer.util
import expectax.infer as ei

def log_w(p, x):
    return -jnp.sum((x - jnp.tanh(p["w"][:4])) ** 2)

def bern(p):
    return dist.Bernoulli(logits=p["w"][:4] - p["mu"]).to_event(1)

def cat_f(p, x):
    return jnp.sin(1.0 + x * p["mu"]) + x

def cat(p):
    return dist.Categorical(logits=p["w"] * jnp.exp(p["log_s"]))

def program(p):
    a = numpyro.sample("a", dist.Bernoulli(logits=p["mu"]))
    z = numpyro.sample("z", dist.Normal(p["w"][:3], jnp.exp(p["log_s"])).to_event(1))
    b = numpyro.sample("b", dist.Bernoulli(logits=p["w"][3] + a))
    return jnp.sum((z - a) ** 2) + (a + b - 0.5) ** 2

DATA = jnp.array([1.0, 0.0, 1.0, 1.0])

def model():
    z = numpyro.sample("z", dist.Bernoulli(0.4))
    loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", 4):
        numpyro.sample("x", dist.Normal(loc + z, 1.0), obs=DATA)

def guide():
    pz, m = numpyro.param("pz", 0.3), numpyro.param("m", 0.1)
    numpyro.sample("z", dist.Bernoulli(jax.nn.sigmoid(pz)))
    numpyro.sample("loc", dist.Normal(m, 0.7))

GUIDE_PARAMS = {"pz": jnp.array(0.3), "m": jnp.array(0.1)}

def joint_split(mesh_of, mesh2):
    out = {}
    cases = {"VIMCO": (ex.VIMCO(), log_w, bern, 8, [1, 2, 8]),
             "UnorderedSet": (ex.UnorderedSet(), cat_f, cat, 4, [1, 2]),
             "SumAndSample": (ex.SumAndSample(), cat_f, cat, 4, [1, 2])}
    for name, (est, fn, dfn, n, counts) in cases.items():
        E = ex.expectation(fn, dfn, estimator=est, num_samples=n)
        out[name] = {"ref": tolist(jax.jit(jax.value_and_grad(E))(PARAMS, KEY))}
        for d in counts:
            Em = ex.expectation(fn, dfn, estimator=est, num_samples=n, mesh=mesh_of(d))
            out[name][d] = tolist(jax.jit(jax.value_and_grad(Em))(PARAMS, KEY))
    E = ex.program_expectation(program, num_particles=16)
    out["program"] = {"ref": tolist(jax.jit(jax.value_and_grad(E))(PARAMS, KEY))}
    for d in [1, 2, 8]:
        Em = ex.program_expectation(program, num_particles=16, mesh=mesh_of(d))
        g = jax.jit(jax.value_and_grad(Em))
        out["program"][d] = tolist(g(PARAMS, KEY))
        if d == 8:  # the leave-one-out sums over the sharded particles are collectives
            hlo = g.lower(PARAMS, KEY).compile().as_text()
            out["program"]["collectives"] = sum(
                (" all-reduce(" in l) or (" all-gather(" in l) for l in hlo.splitlines())
    for cls in (ei.TraceGraph_ELBO, ei.IWELBO):
        runs = {}
        for d in [None, 8]:
            kw = {} if d is None else {"mesh": mesh_of(d)}
            L = cls(16, **kw)
            loss = jax.jit(jax.value_and_grad(lambda p: L.loss(KEY, p, model, guide)))
            runs["ref" if d is None else d] = tolist(loss(GUIDE_PARAMS))
        out[cls.__name__] = runs
    # the losses are sums of log-densities that cancel: their float error is relative to the
    # log joint's size, not to the loss
    point = {"z": jnp.array(1.0), "loc": jnp.array(0.1)}
    log_joint = numpyro.infer.util.log_density(model, (), {}, point)[0]
    out["elbo_scale"] = abs(float(log_joint))
    rows = {}
    for d in [None, 8]:
        kw = {} if d is None else {"mesh": mesh_of(d)}
        res = ex.compare(f, dist_fn, PARAMS, [ex.ScoreFunction(baseline=baselines.LeaveOneOut())],
                         repeats=16, time_budget=0.0, **kw)
        r = res.reports[0]
        rows["ref" if d is None else d] = tolist({"mean": r.mean, "variance": r.variance,
                                                   "snr": r.snr, "estimates": r.estimates})
    out["compare"] = rows
    # params sharded over another mesh axis: a joint estimate and a program keep them
    pw = dict(PARAMS, w=jax.device_put(PARAMS["w"], NamedSharding(mesh2, P("m"))))
    sharded = {}
    for name, E in [
        ("VIMCO", ex.expectation(log_w, bern, estimator=ex.VIMCO(), num_samples=8,
                                 mesh=mesh2, axis_name="s")),
        ("program", ex.program_expectation(program, num_particles=16, mesh=mesh2,
                                           axis_name="s")),
    ]:
        g = jax.jit(jax.grad(E))
        hlo = g.lower(pw, KEY).compile().as_text()
        grad = g(pw, KEY)
        sharded[name] = {"grad": tolist(grad), "spec": str(grad["w"].sharding.spec),
                         "gathers": [l for l in hlo.splitlines()
                                     if " all-gather(" in l and "f32[6]" in l]}
    out["joint_two_axes"] = sharded
    return out
"""

DEVICES_SCRIPT = (
    JOINT
    + """
from jax.sharding import Mesh, NamedSharding, AxisType, PartitionSpec as P
out = {"device_count": jax.device_count()}
def mesh_of(d):
    return Mesh(np.array(jax.devices()[:d]), ("s",))
cases = {"pathwise": ex.Pathwise(), "rloo": ex.ScoreFunction(baseline=baselines.LeaveOneOut())}
for name, est in cases.items():
    E = ex.expectation(f, dist_fn, estimator=est, num_samples=64, chunk_size=8)
    ref = jax.jit(jax.value_and_grad(E))(PARAMS, KEY)
    out[name] = {"ref": tolist(ref)}
    for d in ([1, 2, 8] if name == "pathwise" else [8]):
        Em = ex.expectation(f, dist_fn, estimator=est, num_samples=64, chunk_size=8,
                            mesh=mesh_of(d), axis_name="s")
        out[name][d] = tolist(jax.jit(jax.value_and_grad(Em))(PARAMS, KEY))
ps = lambda **kw: ex.per_sample_grads(f, dist_fn, PARAMS, KEY, estimator=ex.Pathwise(),
                                      num_samples=32, chunk_size=4, **kw)
sharded = ps(mesh=mesh_of(8))
out["per_sample"] = {"ref": tolist(ps()), 8: tolist(sharded),
                     "spec": str(sharded["w"].sharding.spec)}
# params sharded over another mesh axis keep their sharding and are never gathered
mesh2 = Mesh(np.array(jax.devices()).reshape(4, 2), ("s", "m"))
pw = dict(PARAMS, w=jax.device_put(jnp.linspace(0.1, 1.0, 6), NamedSharding(mesh2, P("m"))))
E2 = ex.expectation(f, dist_fn, estimator=ex.Pathwise(), num_samples=64, chunk_size=8,
                    mesh=mesh2, axis_name="s")
g2 = jax.jit(jax.grad(E2))
hlo = g2.lower(pw, KEY).compile().as_text()
grad2 = g2(pw, KEY)
out["two_axes"] = {"grad": tolist(grad2), "spec": str(grad2["w"].sharding.spec),
                   "gathers": [l for l in hlo.splitlines() if " all-gather(" in l]}
# a mesh with explicit axes (jax.make_mesh's default) under jit
mesh_e = jax.make_mesh((8,), ("s",), axis_types=(AxisType.Explicit,))
Ee = ex.expectation(f, dist_fn, estimator=ex.Pathwise(), num_samples=64, chunk_size=8,
                    mesh=mesh_e)
out["explicit"] = tolist(jax.jit(jax.value_and_grad(Ee))(PARAMS, KEY))
# errors that need more than one device
errors = {}
def err(name, **kw):
    try:
        ex.expectation(f, dist_fn, num_samples=kw.pop("n", 64), **kw)
    except (TypeError, ValueError) as e:
        errors[name] = f"{type(e).__name__}: {e}"
err("indivisible", estimator=ex.Pathwise(), chunk_size=16, mesh=mesh_of(8))
err("joint_indivisible", estimator=ex.UnorderedSet(), n=4, mesh=mesh_of(8))
err("two_axes_no_name", estimator=ex.Pathwise(), chunk_size=8, mesh=mesh2)
try:
    ex.per_sample_grads(f, dist_fn, PARAMS, KEY, estimator=ex.VIMCO(), num_samples=8,
                        mesh=mesh_of(2))
except ValueError as e:
    errors["joint_per_sample"] = str(e)
try:
    ex.program_expectation(program, num_particles=12, mesh=mesh_of(8))
except ValueError as e:
    errors["particles"] = str(e)
try:
    ex.compare(f, dist_fn, PARAMS, [ex.Pathwise()], repeats=12, mesh=mesh_of(8))
except ValueError as e:
    errors["repeats"] = str(e)
out["errors"] = errors
out.update(joint_split(mesh_of, mesh2))
print("RESULT " + json.dumps(out))
"""
)


def _run(script: str, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", COMMON + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def devices(tmp_path_factory) -> dict:
    # conftest's XLA flags (backend optimisation off: the same programs on 1 and 8 devices,
    # compiled in a fraction of the time) and 8 host devices; one subprocess for the session,
    # not one per xdist worker
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = {"XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    return once_per_session(tmp_path_factory, "sharding-devices", lambda: _run(DEVICES_SCRIPT, env))


def _close(a, b, rtol=RTOL):
    """Equal to float tolerance: rtol of each leaf's largest magnitude (sums over chunks run
    in another order on several devices)."""
    leaves = lambda t: jax.tree_util.tree_leaves(t, is_leaf=lambda x: isinstance(x, list))  # noqa: E731
    for x, y in zip(leaves(a), leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.max(np.abs(y)))


def test_eight_host_devices(devices):
    assert devices["device_count"] == 8


@pytest.mark.parametrize("d", ["1", "2", "8"])
def test_value_is_bitwise_and_gradient_equal_on_1_2_8_devices(devices, d):
    (value, grad), (ref_value, ref_grad) = devices["pathwise"][d], devices["pathwise"]["ref"]
    assert value == ref_value  # bitwise: the same chunk means, the same mean
    _close(grad, ref_grad)
    if d == "1":
        assert grad == ref_grad


def test_leave_one_out_baseline_is_the_chunks_on_8_devices(devices):
    (value, grad), (ref_value, ref_grad) = devices["rloo"]["8"], devices["rloo"]["ref"]
    assert value == ref_value
    _close(grad, ref_grad)


def test_per_sample_grads_are_the_same_samples_in_order(devices):
    ps = devices["per_sample"]
    _close(ps["8"], ps["ref"])
    assert ps["spec"] == "P('s',)"


def test_params_sharded_over_another_axis_are_not_gathered(devices):
    two = devices["two_axes"]
    assert two["spec"] == "P('m',)"
    assert two["gathers"] == []
    _close(two["grad"], devices["pathwise"]["ref"][1])


def test_a_mesh_with_explicit_axes_under_jit(devices):
    value, grad = devices["explicit"]
    assert value == devices["pathwise"]["ref"][0]
    _close(grad, devices["pathwise"]["ref"][1])


def test_errors_that_need_several_devices(devices):
    errors = devices["errors"]
    assert errors["indivisible"].startswith("ValueError: mesh: num_samples // chunk_size")
    assert "multiple of 8 (e.g. chunk_size=8)" in errors["indivisible"]
    assert errors["joint_indivisible"].startswith("ValueError: mesh: UnorderedSet splits")
    assert "num_samples to be a multiple of 8" in errors["joint_indivisible"]
    assert errors["joint_per_sample"].startswith("per_sample_grads with mesh: the one estimate")
    assert errors["particles"].startswith("mesh: 12 particles cannot be split evenly")
    assert errors["repeats"].startswith("mesh: 12 repeats cannot be split evenly")
    assert "axis_name is None, but mesh has axes ('s', 'm')" in errors["two_axes_no_name"]


@pytest.mark.parametrize(
    ("name", "d"),
    [("VIMCO", "1"), ("VIMCO", "2"), ("VIMCO", "8"), ("UnorderedSet", "2"), ("SumAndSample", "2")],
)
def test_one_joint_estimate_split_over_devices_is_the_single_device_estimate(devices, name, d):
    """VIMCO's log-sum-exp and leave-one-out means, the unordered set's baseline: from every
    device's f values (gathered), so the estimate is mesh=None's for the same key."""
    (value, grad), (ref_value, ref_grad) = devices[name][d], devices[name]["ref"]
    assert value == ref_value  # the same samples and statistics; the terms assembled exactly
    _close(grad, ref_grad)
    if d == "1":
        assert grad == ref_grad


@pytest.mark.parametrize("d", ["1", "2", "8"])
def test_program_particles_split_over_devices(devices, d):
    (value, grad), (ref_value, ref_grad) = devices["program"][d], devices["program"]["ref"]
    _close(value, ref_value)
    _close(grad, ref_grad)


def test_program_leave_one_out_is_a_collective(devices):
    assert devices["program"]["collectives"] > 0


@pytest.mark.parametrize("cls", ["TraceGraph_ELBO", "IWELBO"])
def test_elbos_with_particles_split_over_8_devices(devices, cls):
    (value, grad), (ref_value, ref_grad) = devices[cls]["8"], devices[cls]["ref"]
    scale = devices["elbo_scale"]
    assert abs(value - ref_value) <= RTOL * scale
    for name in grad:  # sums over particles of derivatives of log-densities, which cancel
        assert abs(grad[name] - ref_grad[name]) <= RTOL * scale, name


def test_compare_repeats_split_over_8_devices_give_the_same_moments(devices):
    rows = devices["compare"]
    for field in ("estimates", "mean", "variance", "snr"):
        _close(rows["8"][field], rows["ref"][field])


@pytest.mark.parametrize("name", ["VIMCO", "program"])
def test_joint_and_program_paths_keep_params_sharded_over_another_axis(devices, name):
    two = devices["joint_two_axes"][name]
    assert two["spec"] == "P('m',)"
    assert two["gathers"] == []
    ref = devices[name]["ref"][1] if name == "program" else devices["VIMCO"]["ref"][1]
    _close(two["grad"], ref)


# ----------------------------------------------------------- in this process (one device)


def f(p, x):
    return jnp.sum(jnp.tanh(p["w"] * x)) + x**2


def dist_fn(p):
    return dist.Normal(p["mu"], jnp.exp(p["log_s"]))


PARAMS = {"w": jnp.linspace(0.1, 1.0, 6), "mu": jnp.array(0.3), "log_s": jnp.array(-0.2)}
KEY = jax.random.key(7)
MESH = Mesh(np.array(jax.devices()[:1]), ("s",))


def test_one_device_mesh_is_bitwise_the_chunked_result():
    kw = {"estimator": ex.ScoreFunction(baseline=baselines.LeaveOneOut()), "num_samples": 32}
    E = ex.expectation(f, dist_fn, chunk_size=4, **kw)
    Em = ex.expectation(f, dist_fn, chunk_size=4, mesh=MESH, axis_name="s", **kw)
    v, g = jax.value_and_grad(E)(PARAMS, KEY)
    vm, gm = jax.value_and_grad(Em)(PARAMS, KEY)
    assert float(v) == float(vm)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(gm), strict=True):
        np.testing.assert_array_equal(a, b)
    fwd = jax.jit(jax.jacfwd(Em))(PARAMS, KEY)  # forward mode goes through shard_map too
    _close(fwd, g)


def test_one_device_mesh_with_one_chunk_draws_from_the_key_itself():
    """chunk_size=num_samples (one chunk) draws from ``key``, as without a mesh."""
    kw = {"estimator": ex.ScoreFunction(baseline=baselines.LeaveOneOut()), "num_samples": 8}
    E = ex.expectation(f, dist_fn, chunk_size=8, **kw)
    Em = ex.expectation(f, dist_fn, chunk_size=8, mesh=MESH, **kw)
    assert float(jax.jit(E)(PARAMS, KEY)) == float(jax.jit(Em)(PARAMS, KEY))
    ps = [
        jax.jit(lambda p, k, m=m: ex.per_sample_grads(f, dist_fn, p, k, chunk_size=8, mesh=m, **kw))
        for m in (MESH, None)
    ]
    _close(ps[0](PARAMS, KEY), ps[1](PARAMS, KEY))


def test_program_and_elbo_mesh_errors():
    program = lambda p: numpyro.sample("a", dist.Normal(p["mu"], 1.0)) ** 2  # noqa: E731
    with pytest.raises(ValueError, match="vectorize_particles is a function of your own"):
        ex.program_expectation(
            program, num_particles=4, mesh=MESH, vectorize_particles=lambda fn, k: fn(k)
        )
    with pytest.raises(ValueError, match="axis_name='s' needs mesh"):
        ex.program_expectation(program, num_particles=4, axis_name="s")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        TraceGraph_ELBO(4, mesh="cpu")
    with pytest.raises(ValueError, match=r"axis_name='x' is not an axis of mesh"):
        IWELBO(4, mesh=MESH, axis_name="x")
    with pytest.raises(ValueError, match="axis_name='s' needs mesh"):
        ex.compare(f, dist_fn, PARAMS, [ex.Pathwise()], repeats=4, axis_name="s")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mesh": "cpu", "chunk_size": 4}, TypeError, "mesh must be a jax.sharding.Mesh"),
        ({"mesh": MESH, "axis_name": "x", "chunk_size": 4}, ValueError, r"axis_name='x'.*\('s',\)"),
        ({"mesh": MESH}, ValueError, "mesh needs chunk_size.*chunk_size=32"),
        ({"axis_name": "s", "chunk_size": 4}, ValueError, "axis_name='s' needs mesh"),
        ({"mesh": MESH, "chunk_size": 4, "debug": True}, ValueError, "debug=True does not"),
    ],
)
def test_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ex.expectation(f, dist_fn, estimator=ex.Pathwise(), num_samples=32, **kwargs)
    with pytest.raises(error, match=match):
        ex.per_sample_grads(
            f, dist_fn, PARAMS, KEY, estimator=ex.Pathwise(), num_samples=32, **kwargs
        )


# ----------------------------------------------------------------- two processes (hosts)

# jax.distributed.initialize must run before anything touches the backend (COMMON's arrays)
WORKER_INIT = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
"""

WORKER = """
from jax.sharding import Mesh
mesh = Mesh(np.array(jax.devices()), ("s",))  # one CPU device per process
E = ex.expectation(f, dist_fn, estimator=ex.ScoreFunction(baseline=baselines.LeaveOneOut()),
                   num_samples=32, chunk_size=4, mesh=mesh, axis_name="s")
value, grad = jax.jit(jax.value_and_grad(E))(PARAMS, KEY)
print("RESULT " + json.dumps({"devices": jax.device_count(), "local": jax.local_device_count(),
                              "value": float(value), "grad": tolist(grad)}))
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_get_the_single_process_result():
    port = str(_free_port())
    # conftest's flags (XLA's backend optimisation off), one device per process
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    code = WORKER_INIT + COMMON + WORKER
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, port, str(pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for pid in range(2)
    ]
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            proc.kill()
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, stderr[-3000:]
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    E = ex.expectation(
        f,
        dist_fn,
        estimator=ex.ScoreFunction(baseline=baselines.LeaveOneOut()),
        num_samples=32,
        chunk_size=4,
    )
    value, grad = jax.jit(jax.value_and_grad(E))(PARAMS, KEY)
    for r in results:
        assert (r["devices"], r["local"]) == (2, 1)
        assert r["value"] == float(value)
        _close(r["grad"], grad)
