"""Samples over devices: the ``mesh=`` option of :func:`expectax.expectation`.

The samples of one estimate are cut into ``num_samples // chunk_size`` chunks, chunk ``j``
drawn with ``jax.random.fold_in(key, j)`` exactly as without a mesh. With ``mesh`` and
``axis_name``, each of the ``D`` devices along that mesh axis computes a contiguous block of
``num_chunks // D`` chunks inside :func:`jax.shard_map` (manual over ``axis_name`` only; any
other mesh axis stays under the compiler's automatic sharding). The chunk means are combined
with one collective: each device writes its chunk means into its own slots of a
``num_chunks`` vector, a ``psum`` adds the vectors (adding zeros is exact), and the mean of
that vector is taken as on one device. So the samples for a key do not depend on the device
count, the value is bitwise the single-device chunked value, and the gradient equals it up to
the order of the floating-point sum over chunks (the backward pass adds each device's chunk
gradients, then the devices' sums).

Cross-sample statistics stay within a chunk, as with ``chunk_size`` alone: a
``LeaveOneOut`` baseline is the chunk's, and a chunk is never split over devices, so it is
exact on any number of devices.

Estimators whose samples form one joint estimate (``estimator.joint_samples``: VIMCO,
UnorderedSet, SumAndSample) take ``chunk_size=None``: the one estimate's ``num_samples``
samples are drawn from ``key`` on every device exactly as without a mesh (drawing is cheap;
evaluating f is not), each device evaluates f on its contiguous block of
``num_samples // D`` samples, and the statistics that couple the samples (VIMCO's
log-sum-exp and leave-one-out means, the unordered set's baseline) are computed from the
``all_gather`` of the stop-gradient values of f: the same numbers as on one device. Each
device's terms go into its slots of the ``num_samples`` terms, and one ``psum`` assembles
them. The estimator learns of the split from :func:`claim_split`, a trace-time scope that
:func:`sharded_chunk_mean` opens around the estimate (no state survives the trace).

:func:`particle_map` is the same idea for stochastic programs and ELBOs: the particles
(``(fn, keys) -> stacked results``) run inside ``shard_map``, their results come back
sharded over the axis, and the cross-particle reductions that follow (leave-one-out
baselines, VIMCO's log-sum-exp over particles, the mean) are ordinary ``jnp`` reductions that
the compiler turns into collectives. :func:`sharded_repeats` splits ``compare``'s
independent estimates over the axis.

Parameters enter replicated over ``axis_name`` (``P()`` for that axis): parameters that the
user sharded over *another* mesh axis (e.g. ``"model"``) keep that sharding; parameters
sharded over the sample axis itself are gathered over it, since every device's samples need
all of θ.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

__all__ = [
    "NO_SPLIT",
    "SampleSplit",
    "check_mesh",
    "check_split_axis",
    "claim_split",
    "mesh_axis",
    "particle_map",
    "sharded_chunk_mean",
    "sharded_per_sample",
    "sharded_repeats",
]

PyTree = Any


def mesh_axis(mesh: Any, axis_name: Any, what: str) -> tuple[Mesh, Any, int]:
    """Check that ``mesh`` is a ``Mesh`` and ``axis_name`` one of its axes (the only one may be
    omitted); ``what`` names what is split (samples, particles, episodes) in the messages.

    Returns ``(mesh, axis_name, number of devices along the axis)``.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(
            "mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh((jax.device_count(),), "
            f"({what!r},)); got {type(mesh).__name__}."
        )
    names = tuple(mesh.axis_names)
    if axis_name is None:
        if len(names) != 1:
            raise ValueError(
                f"axis_name is None, but mesh has axes {names}: pass axis_name=<the mesh axis "
                f"the {what} are split over>."
            )
        axis_name = names[0]
    if axis_name not in names:
        raise ValueError(
            f"axis_name={axis_name!r} is not an axis of mesh (its axes are {names}): pass "
            f"the name of the mesh axis the {what} are split over."
        )
    return mesh, axis_name, int(mesh.shape[axis_name])


def check_mesh(
    mesh: Any,
    axis_name: Any,
    num_samples: int,
    chunk_size: Any,
    estimator: Any,
    debug: bool = False,
) -> tuple[Mesh, Any, int]:
    """Validate ``mesh``/``axis_name`` (after ``chunk_size`` itself was checked).

    Returns ``(mesh, axis_name, number of devices along the axis)``.
    """
    mesh, axis_name, devices = mesh_axis(mesh, axis_name, "samples")
    if debug:
        raise ValueError(
            "debug=True does not combine with mesh (its run-time checks are host callbacks "
            "that expectax does not run inside shard_map): debug with mesh=None, which draws "
            "the same samples for the same key and chunk_size."
        )
    if estimator.joint_samples:
        return mesh, axis_name, _check_joint(estimator, axis_name, devices, num_samples)
    if chunk_size is None:
        raise ValueError(
            f"mesh needs chunk_size: each of the {devices} devices along {axis_name!r} "
            "computes whole chunks, and fixing the chunk size makes the samples for a key the "
            "same on any number of devices. Pass e.g. chunk_size="
            f"{max(num_samples // devices, 1)}."
        )
    num_chunks = num_samples // operator.index(chunk_size)  # chunk_size checked already
    if num_chunks % devices:
        raise ValueError(
            f"mesh: num_samples // chunk_size = {num_samples} // {chunk_size} = {num_chunks} "
            f"chunks cannot be split evenly over the {devices} devices of axis "
            f"{axis_name!r}. Pick chunk_size so that the number of chunks is a multiple "
            f"of {devices} (e.g. chunk_size={_suggest(num_samples, chunk_size, devices)})."
        )
    return mesh, axis_name, devices


def _check_joint(estimator: Any, axis_name: Any, devices: int, num_samples: int) -> int:
    """A joint-sample estimator over ``devices``: its one estimate's samples split evenly."""
    if devices == 1:
        return devices
    if not getattr(estimator, "splits_samples", False):
        raise ValueError(
            f"mesh: {estimator.name} combines all num_samples={num_samples} samples into one "
            "estimate and does not say how to split them over devices (axis "
            f"{axis_name!r} has {devices} devices): its statistics would have to be computed "
            "from every sample. Use mesh=None, or jax.vmap/shard_map several independent "
            "estimates (one key each) yourself."
        )
    if num_samples % devices:
        raise ValueError(
            f"mesh: {estimator.name} splits the num_samples={num_samples} samples of its one "
            f"estimate over the {devices} devices of axis {axis_name!r}, which needs "
            f"num_samples to be a multiple of {devices}. Use num_samples="
            f"{max(devices, num_samples - num_samples % devices)}, or a mesh axis whose size "
            f"divides {num_samples}."
        )
    return devices


def _suggest(num_samples: int, chunk: int, devices: int) -> int:
    fits = [
        c
        for c in range(1, num_samples + 1)
        if num_samples % c == 0 and (num_samples // c) % devices == 0
    ]
    if not fits:
        return max(num_samples // devices, 1)
    return min(fits, key=lambda c: (abs(math.log(c / chunk)), c))


def _chunk_keys(key: jax.Array, axis_name: Any, per: int) -> jax.Array:
    first = jax.lax.axis_index(axis_name) * per
    return jax.vmap(lambda j: jax.random.fold_in(key, j))(first + jnp.arange(per))


# ------------------------------------------------------------- one joint estimate, split


@dataclasses.dataclass(frozen=True)
class SampleSplit:
    """How the ``n`` samples of one joint estimate are split over a mesh axis.

    Inside :func:`jax.shard_map` over ``axis_name`` (``devices`` devices), device ``d`` owns
    the contiguous block ``[d·n/D, (d+1)·n/D)``. An estimator that asks for the split
    (:func:`claim_split`) draws all ``n`` samples as on one device, evaluates f on
    :meth:`local` samples only, computes its cross-sample statistics from :meth:`gather` of
    stop-gradient values, and returns :meth:`spread` of its local terms: the ``(n,)`` terms
    of the single-device estimate. ``SampleSplit(None, 1)`` (:data:`NO_SPLIT`) is the identity,
    so one code path serves one or many devices.
    """

    axis_name: Any
    devices: int

    def local(self, tree: PyTree) -> PyTree:
        """This device's block of every leaf's leading (sample) axis."""
        if self.devices == 1:
            return tree

        def block(x: jax.Array) -> jax.Array:
            per = x.shape[0] // self.devices
            start = jax.lax.axis_index(self.axis_name) * per
            return jax.lax.dynamic_slice_in_dim(x, start, per, axis=0)

        return jax.tree_util.tree_map(block, tree)

    def gather(self, x: jax.Array) -> jax.Array:
        """Every device's block of ``x`` (leading axis), in sample order. For statistics: pass
        stop-gradient values (the gradient of each term flows through its own device)."""
        if self.devices == 1:
            return x
        return jax.lax.all_gather(jax.lax.stop_gradient(x), self.axis_name, axis=0, tiled=True)

    def spread(self, local_terms: jax.Array, n: int) -> jax.Array:
        """The ``(n,)`` terms of all devices from this device's block (one ``psum`` of slots;
        adding zeros is exact)."""
        if self.devices == 1:
            return local_terms
        start = jax.lax.axis_index(self.axis_name) * (n // self.devices)
        slots = jnp.zeros((n,), local_terms.dtype)
        slots = jax.lax.dynamic_update_slice_in_dim(slots, local_terms, start, axis=0)
        return jax.lax.psum(slots, self.axis_name)


NO_SPLIT = SampleSplit(None, 1)

_SPLIT: contextvars.ContextVar[SampleSplit | None] = contextvars.ContextVar(
    "expectax_sample_split", default=None
)


@contextlib.contextmanager
def _split_scope(split: SampleSplit) -> Iterator[None]:
    token = _SPLIT.set(split)
    try:
        yield
    finally:
        _SPLIT.reset(token)


def claim_split() -> SampleSplit:
    """The split of the estimate being traced (:data:`NO_SPLIT` outside a sharded one).

    Claiming ends the scope, so an ``expectation`` nested inside the user's f is not split.
    """
    split = _SPLIT.get()
    if split is None:
        return NO_SPLIT
    _SPLIT.set(None)
    return split


# ------------------------------------------------------------------------- entry points


def sharded_chunk_mean(
    chunk_mean: Callable[[PyTree, jax.Array], jax.Array],
    params: PyTree,
    key: jax.Array,
    *,
    mesh: Mesh,
    axis_name: Any,
    num_chunks: int,
) -> jax.Array:
    """The mean over ``num_chunks`` chunk means, chunks split over ``mesh``'s ``axis_name``.

    With one chunk (``chunk_size=None`` or ``num_samples``: the joint-sample estimators) the
    chunk is drawn from ``key`` itself, as without a mesh, and over several devices its
    samples are split by the estimator (:func:`claim_split`).
    """
    devices = int(mesh.shape[axis_name])
    if num_chunks == 1:

        def joint(params: PyTree, key: jax.Array) -> jax.Array:
            if devices == 1:
                return chunk_mean(params, key)
            with _split_scope(SampleSplit(axis_name, devices)):
                value = chunk_mean(params, key)
                if _SPLIT.get() is not None:  # check_mesh admits only estimators that split
                    raise RuntimeError("mesh: the estimator did not claim its split (a bug).")
            return value

        run = jax.shard_map(
            joint, mesh=mesh, in_specs=(P(), P()), out_specs=P(), axis_names={axis_name}
        )
        return run(params, key)
    per = num_chunks // devices
    remat = jax.checkpoint(chunk_mean)  # gradient memory of one chunk, as without a mesh

    def body(params: PyTree, key: jax.Array) -> jax.Array:
        means = jax.lax.map(lambda k: remat(params, k), _chunk_keys(key, axis_name, per))
        first = jax.lax.axis_index(axis_name) * per
        slots = jax.lax.dynamic_update_slice(jnp.zeros(num_chunks, means.dtype), means, (first,))
        return jnp.mean(jax.lax.psum(slots, axis_name))

    run = jax.shard_map(body, mesh=mesh, in_specs=(P(), P()), out_specs=P(), axis_names={axis_name})
    return run(params, key)


def sharded_per_sample(
    chunk_grads: Callable[[PyTree, jax.Array], PyTree],
    params: PyTree,
    key: jax.Array,
    *,
    mesh: Mesh,
    axis_name: Any,
    num_chunks: int,
    num_samples: int,
) -> PyTree:
    """Per-sample gradients, chunks split over ``axis_name``; the result's leading (sample)
    axis is sharded over ``axis_name``, samples in the single-device order."""
    devices = int(mesh.shape[axis_name])
    if num_chunks < devices:
        raise ValueError(
            f"per_sample_grads with mesh: the one estimate of num_samples={num_samples} "
            f"samples cannot be split into per-sample gradients over the {devices} devices of "
            f"axis {axis_name!r} (a joint-sample estimator's term i depends on every sample). "
            "Use mesh=None, or expectation(..., mesh=mesh) for the gradient of the estimate."
        )
    per = num_chunks // devices
    local = num_samples // devices

    def body(params: PyTree, key: jax.Array) -> PyTree:
        # Per-sample gradients are per device: without marking params as varying over the
        # axis, the gradient with respect to a replicated input would be summed over devices.
        params = jax.lax.pcast(params, axis_name, to="varying")
        if num_chunks == 1:  # one device, one chunk: drawn from key, as without a mesh
            return chunk_grads(params, key)
        grads = jax.lax.map(lambda k: chunk_grads(params, k), _chunk_keys(key, axis_name, per))
        return jax.tree_util.tree_map(lambda g: g.reshape((local, *g.shape[2:])), grads)

    run = jax.shard_map(
        body, mesh=mesh, in_specs=(P(), P()), out_specs=P(axis_name), axis_names={axis_name}
    )
    return run(params, key)


# ------------------------------------------------------- particles and repeated estimates


def check_split_axis(mesh: Any, axis_name: Any, count: int, what: str) -> tuple[Mesh, Any, int]:
    """Validate ``mesh``/``axis_name`` for splitting ``count`` independent ``what`` (particles,
    repeats) evenly over the axis; returns ``(mesh, axis_name, devices)``."""
    mesh, axis_name, devices = mesh_axis(mesh, axis_name, what)
    if count % devices:
        fit = max(devices, count - count % devices)
        raise ValueError(
            f"mesh: {count} {what} cannot be split evenly over the {devices} devices of axis "
            f"{axis_name!r}; use a multiple of {devices} (e.g. {fit})."
        )
    return mesh, axis_name, devices


def particle_map(
    mesh: Mesh, axis_name: Any, vectorize: bool = True
) -> Callable[[Callable[[jax.Array], PyTree], jax.Array], PyTree]:
    """A ``vectorize_particles`` function ``(fn, keys) -> stacked results`` that runs the
    particles inside ``shard_map``, each device ``len(keys) // D`` of them (``jax.vmap`` if
    ``vectorize`` else ``jax.lax.map``). The stacked results are sharded over ``axis_name``
    and equal the unsharded ones: particle i still gets ``keys[i]``. Whatever ``fn`` closes
    over (params, other keys) enters replicated over ``axis_name``; params sharded over
    another mesh axis keep that sharding.
    """

    def run(fn: Callable[[jax.Array], PyTree], keys: jax.Array) -> PyTree:
        check_split_axis(mesh, axis_name, keys.shape[0], "particles")

        def body(local_keys: jax.Array) -> PyTree:
            return jax.vmap(fn)(local_keys) if vectorize else jax.lax.map(fn, local_keys)

        shard = jax.shard_map(
            body, mesh=mesh, in_specs=P(axis_name), out_specs=P(axis_name), axis_names={axis_name}
        )
        return shard(keys)

    return run


def sharded_repeats(
    fn: Callable[[PyTree, jax.Array], PyTree],
    params: PyTree,
    keys: jax.Array,
    *,
    mesh: Mesh,
    axis_name: Any,
) -> PyTree:
    """``jax.vmap(fn, in_axes=(None, 0))(params, keys)`` with the keys split over
    ``axis_name``: each device computes ``len(keys) // D`` independent results (e.g.
    ``compare``'s repeated estimates), stacked and sharded over the axis, the same numbers as
    unsharded."""

    def body(params: PyTree, local_keys: jax.Array) -> PyTree:
        params = jax.lax.pcast(params, axis_name, to="varying")
        return jax.vmap(fn, in_axes=(None, 0))(params, local_keys)

    shard = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(), P(axis_name)),
        out_specs=P(axis_name),
        axis_names={axis_name},
    )
    return shard(params, keys)
