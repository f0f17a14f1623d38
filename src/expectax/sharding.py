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
``LeaveOneOut`` baseline is the chunk's. Estimators whose samples form one joint estimate
(``estimator.joint_samples``: VIMCO, UnorderedSet, SumAndSample) refuse the option.

Parameters enter replicated over ``axis_name`` (``P()`` for that axis): parameters that the
user sharded over *another* mesh axis (e.g. ``"model"``) keep that sharding; parameters
sharded over the sample axis itself are gathered over it, since every device's samples need
all of θ.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

__all__ = ["check_mesh", "sharded_chunk_mean", "sharded_per_sample"]

PyTree = Any


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
    if not isinstance(mesh, Mesh):
        raise TypeError(
            "mesh must be a jax.sharding.Mesh, e.g. jax.make_mesh((jax.device_count(),), "
            f"('samples',)); got {type(mesh).__name__}."
        )
    names = tuple(mesh.axis_names)
    if axis_name is None:
        if len(names) != 1:
            raise ValueError(
                f"axis_name is None, but mesh has axes {names}: pass axis_name=<the mesh axis "
                "the samples are split over>."
            )
        axis_name = names[0]
    if axis_name not in names:
        raise ValueError(
            f"axis_name={axis_name!r} is not an axis of mesh (its axes are {names}): pass "
            "the name of the mesh axis the samples are split over."
        )
    devices = int(mesh.shape[axis_name])
    if debug:
        raise ValueError(
            "debug=True does not combine with mesh (its run-time checks are host callbacks "
            "that expectax does not run inside shard_map): debug with mesh=None, which draws "
            "the same samples for the same key and chunk_size."
        )
    if estimator.joint_samples and devices > 1:
        raise ValueError(
            f"mesh: {estimator.name} combines all num_samples={num_samples} samples into one "
            f"estimate, which expectax does not split over devices (axis {axis_name!r} has "
            f"{devices} devices). Use mesh=None, or jax.vmap/shard_map several independent "
            "estimates (one key each) yourself."
        )
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


def sharded_chunk_mean(
    chunk_mean: Callable[[PyTree, jax.Array], jax.Array],
    params: PyTree,
    key: jax.Array,
    *,
    mesh: Mesh,
    axis_name: Any,
    num_chunks: int,
) -> jax.Array:
    """The mean over ``num_chunks`` chunk means, chunks split over ``mesh``'s ``axis_name``."""
    devices = int(mesh.shape[axis_name])
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
    per = num_chunks // devices
    local = num_samples // devices

    def body(params: PyTree, key: jax.Array) -> PyTree:
        # Per-sample gradients are per device: without marking params as varying over the
        # axis, the gradient with respect to a replicated input would be summed over devices.
        params = jax.lax.pcast(params, axis_name, to="varying")
        grads = jax.lax.map(lambda k: chunk_grads(params, k), _chunk_keys(key, axis_name, per))
        return jax.tree_util.tree_map(lambda g: g.reshape((local, *g.shape[2:])), grads)

    run = jax.shard_map(
        body, mesh=mesh, in_specs=(P(), P()), out_specs=P(axis_name), axis_names={axis_name}
    )
    return run(params, key)
