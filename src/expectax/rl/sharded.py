"""Episodes over devices: the ``mesh=`` option of the pure-JAX trainer.

With a ``jax.sharding.Mesh`` and one of its axes, :func:`expectax.rl.make_jax_trainer` runs
each training step (rollout and update) and each evaluation inside :func:`jax.shard_map`,
manual over that axis: each of the ``D`` devices simulates a contiguous block of
``E / D`` of the batch's ``E`` episodes, and every cross-episode reduction of the update is a
collective (:class:`EpisodeAxis`): the batch means of the loss and of the returns, the
leave-one-out baseline's sum over the other episodes, the moving-average baseline's batch
mean, and the sums, the count and the scale of advantage normalisation (``psum``/``pmax``).
The state and the key enter replicated (``P()``), and the gradient, the Adam step and the new
state come out replicated: the gradient of the psum'd loss with respect to replicated
parameters is the sum of every device's share (JAX transposes the implicit broadcast of the
parameters into a ``psum``).

Keys: episode ``i`` of a batch uses the ``i``-th key of ``jax.random.split(key, E)`` at reset
and at every step, exactly as without a mesh; each device computes only its own block of
those keys (:func:`split_range`, using that ``split`` with the partitionable threefry is the
threefry hash of the counters ``0..E-1``). So a device simulates exactly the episodes it
would without a mesh, bitwise, on any number of devices; the gradient and the new state
equal the single-device ones up to the order of the floating-point sums over episodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from expectax.sharding import mesh_axis

__all__ = ["EpisodeAxis", "check_episode_mesh", "shard_replicated", "split_range"]


def check_episode_mesh(mesh: Any, axis_name: Any, sizes: dict[str, int]) -> tuple[Mesh, Any, int]:
    """Validate ``mesh``/``axis_name`` for the trainer and that every size in ``sizes``
    (``{"batch_episodes": 8, ...}``) splits evenly over the axis.

    Returns ``(mesh, axis_name, number of devices along the axis)``.
    """
    mesh, axis_name, devices = mesh_axis(mesh, axis_name, "episodes")
    for name, n in sizes.items():
        if n % devices:
            raise ValueError(
                f"{name}={n} episodes do not split evenly over the {devices} devices of mesh "
                f"axis {axis_name!r} (each device runs whole episodes): use a multiple of "
                f"{devices} for {name} (--{name.replace('_', '-')}), e.g. "
                f"{_multiples(n, devices)}."
            )
    return mesh, axis_name, devices


def _multiples(n: int, devices: int) -> str:
    lo = (n // devices) * devices
    return f"{lo} or {lo + devices}" if lo else str(devices)


def split_range(key: jax.Array, num: int, start: jax.Array | int, count: int) -> jax.Array:
    """``jax.random.split(key, num)[start:start + count]``, computing only those ``count`` keys.

    With the partitionable threefry (``jax_threefry_partitionable``, JAX's default), key ``i``
    of ``split(key, num)`` is the threefry-2x32 hash of the counter ``(0, i)``, so a block of
    keys is the hash of its own counters. Otherwise (or for another key implementation) the
    full split is sliced. ``tests/test_rl_sharding.py`` checks both paths against ``split``.
    """
    impl = jax.random.key_impl(key)
    lo = jnp.asarray(start).astype(jnp.uint32) + jnp.arange(count, dtype=jnp.uint32)
    if jax.config.jax_threefry_partitionable and "threefry2x32" in str(impl) and num < 2**32:
        from jax.extend.random import threefry2x32_p

        k1, k2 = jax.random.key_data(key)
        b1, b2 = threefry2x32_p.bind(k1, k2, jnp.zeros_like(lo), lo)
        data = jnp.stack([b1, b2], axis=-1)
    else:
        data = jax.random.key_data(jax.random.split(key, num))
        data = jax.lax.dynamic_slice_in_dim(data, start, count)
    # Inside shard_map a ``start`` from axis_index varies over the axis, but the threefry
    # primitive types its result as replicated; or-ing in zeros derived from ``start`` (exact,
    # and folded away by XLA) gives the keys the varying type their values have.
    data = data | (lo & 0)[:, None]
    return jax.random.wrap_key_data(data, impl=impl)


class EpisodeAxis:
    """The batch's episode axis: all ``total`` episodes local (``axis_name=None``), or split
    in contiguous blocks of ``total // devices`` over the mesh axis ``axis_name`` (inside
    ``shard_map``). The update asks it for every cross-episode reduction, so that one code
    path serves one device and many; without a mesh each is the plain ``jnp`` operation the
    trainer always used."""

    def __init__(self, total: int, axis_name: Any = None, devices: int = 1):
        self.total = total
        self.axis_name = axis_name
        self.local = total // devices

    @property
    def sharded(self) -> bool:
        return self.axis_name is not None

    def first_index(self) -> jax.Array | int:
        """Global index of this device's first episode."""
        if not self.sharded:
            return 0
        return jax.lax.axis_index(self.axis_name) * self.local

    def split(self, key: jax.Array) -> jax.Array:
        """This device's episodes' keys of ``jax.random.split(key, total)``."""
        if not self.sharded:
            return jax.random.split(key, self.total)
        return split_range(key, self.total, self.first_index(), self.local)

    def varying(self, tree: Any) -> Any:
        """Replicated values (e.g. zero buffers of a loop's carry) typed as varying over the
        axis, as the per-device values written into them will be."""
        if not self.sharded:
            return tree
        return jax.lax.pcast(tree, self.axis_name, to="varying")

    def _psum(self, x: jax.Array) -> jax.Array:
        return jax.lax.psum(x, self.axis_name) if self.sharded else x

    def sum(self, x: jax.Array, axis: int | None = 0, keepdims: bool = False) -> jax.Array:
        """Sum over the episodes (leading axis; ``axis=None``: over every element)."""
        return self._psum(jnp.sum(x, axis=axis, keepdims=keepdims))

    def mean(self, x: jax.Array) -> jax.Array:
        """Mean of an ``(E, ...)`` array over all its elements, all episodes included."""
        if not self.sharded:
            return jnp.mean(x)
        return self.sum(x, axis=None) / (self.total * math.prod(x.shape[1:]))

    def max(self, x: jax.Array) -> jax.Array:
        """Maximum over every element, all episodes included."""
        m = jnp.max(x)
        return jax.lax.pmax(m, self.axis_name) if self.sharded else m

    def first(self, x: jax.Array) -> jax.Array:
        """``x[:1]`` of the whole batch (global episode 0), on every device."""
        if not self.sharded:
            return x[:1]
        mine = jax.lax.axis_index(self.axis_name) == 0
        return self._psum(jnp.where(mine, x[:1], jnp.zeros_like(x[:1])))


def shard_replicated(fn: Callable, mesh: Mesh, axis_name: Any, num_args: int) -> Callable:
    """``fn`` inside ``shard_map``, manual over ``axis_name``: every argument and every result
    replicated over it (``P()``); other mesh axes stay under automatic sharding."""
    return jax.shard_map(
        fn, mesh=mesh, in_specs=(P(),) * num_args, out_specs=P(), axis_names={axis_name}
    )
