"""Use a trained policy: :func:`load_policy` reads the output directory of ``expectax rl``.

.. code-block:: python

    pi = expectax.rl.load_policy("runs/rl-CartPole-v1-s0")
    action = pi.act(obs)                      # greedy; pi.act(obs, key) samples
    result = pi.evaluate(episodes=100)        # fresh episodes: mean, SE, solved
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TrainedPolicy", "load_policy"]

# Evaluation keys live apart from every training key (those fold in a batch index < 2**31 - 2).
_EVAL_STREAM = 2**31 - 2


@dataclasses.dataclass(frozen=True)
class TrainedPolicy:
    """A policy read back from a training run.

    Attributes:
      config: the run's :class:`expectax.rl.Config`.
      policy: the :class:`expectax.rl.Policy` (``init``/``apply``).
      params: the trained policy parameters (a pytree of arrays).
      threshold: the return that counts as solved (the env's, or the run's
        ``solve_threshold``); ``None`` if the environment has none.
      training_episodes: training episodes the parameters have seen.
    """

    config: Any
    policy: Any
    params: Any
    threshold: float | None
    training_episodes: int

    def distribution(self, obs: jax.Array):
        """The numpyro distribution over actions for one observation."""
        return self.policy.apply(self.params, jnp.asarray(obs, jnp.float32))

    def act(self, obs: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """An action for one observation: sampled with ``key``, the most likely one without."""
        from expectax.rl.rollout import greedy_action

        d = self.distribution(obs)
        return greedy_action(d) if key is None else d.sample(key)

    def evaluate(
        self,
        episodes: int = 100,
        *,
        backend: str = "auto",
        greedy: bool = False,
        seed: int = 0,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        """Mean return over ``episodes`` fresh episodes (keys derived from ``seed`` only).

        Args:
          episodes: number of episodes (≥ 1; 100 or more to call it solved).
          backend: ``"auto"`` (pure JAX for CartPole-v1), ``"jax"`` or ``"gymnasium"``.
          greedy: take the most likely action instead of sampling.
          seed: the evaluation's seed, ``0 <= seed < 2**32``.
          threshold: overrides the solve threshold.

        Returns:
          A dict: ``env_id``, ``backend``, ``seed``, ``episodes``, ``mean``, ``se``, ``min``,
          ``max``, ``threshold`` and ``solved`` (mean ≥ threshold over at least 100 episodes).
        """
        from expectax import runio
        from expectax.rl.env_info import make_env_info
        from expectax.rl.rollout import _GymRunner, jax_rollout

        if not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"episodes must be an integer ≥ 1, got {episodes!r}.")
        runio.check_seed(seed)
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}.")
        cfg = dataclasses.replace(self.config, backend=backend, seed=seed)
        cfg.validate()
        threshold = self.threshold if threshold is None else threshold
        key = jax.random.fold_in(jax.random.key(seed), _EVAL_STREAM)
        params = {"policy": self.params}
        if cfg.resolved_backend == "jax":
            batch = jax_rollout(self.policy, self.params, key, episodes, greedy)
        else:
            info = make_env_info(cfg.env_id)
            runner = _GymRunner(info, self.policy)
            try:
                env_seed = int(np.random.SeedSequence([seed, _EVAL_STREAM]).generate_state(1)[0])
                batch = runner.rollout(params, key, env_seed, episodes, "evaluation", greedy)
            finally:
                runner.close()
        returns = np.asarray(jnp.sum(batch.rewards * batch.mask, axis=1), np.float64)
        mean = float(returns.mean())
        se = float(returns.std(ddof=1) / math.sqrt(episodes)) if episodes > 1 else math.nan
        solved = threshold is not None and episodes >= 100 and mean >= threshold
        return {
            "env_id": cfg.env_id,
            "backend": cfg.resolved_backend,
            "greedy": greedy,
            "seed": seed,
            "episodes": episodes,
            "mean": mean,
            "se": se,
            "min": float(returns.min()),
            "max": float(returns.max()),
            "threshold": threshold,
            "solved": bool(solved),
            "training_episodes": self.training_episodes,
        }


def load_policy(path: str | os.PathLike) -> TrainedPolicy:
    """Read the trained policy of an ``expectax rl`` run.

    Args:
      path: the run's output directory (``--out``), or its ``checkpoint.npz``.

    Returns:
      A :class:`TrainedPolicy`.

    Raises:
      ValueError: no checkpoint there, or one that is truncated, corrupt, pickled or holds
        NaN/inf (never loaded unsafely).
    """
    from expectax.rl.checkpoints import _read_npz, _saved_config, _unreadable, load_checkpoint
    from expectax.rl.config import Config, make_optimizer
    from expectax.rl.env_info import _policy, make_env_info
    from expectax.rl.learner import _init_state

    path = Path(path)
    ckpt = path / "checkpoint.npz" if path.is_dir() or path.suffix != ".npz" else path
    if not ckpt.exists():
        raise ValueError(
            f"no checkpoint at {str(ckpt)!r}: pass the --out directory of an `expectax rl` run."
        )
    data = _read_npz(ckpt)
    saved = _saved_config(ckpt, data)
    fields = {f.name for f in dataclasses.fields(Config)}
    try:
        saved["hidden"] = tuple(saved["hidden"])
        config = Config(**{k: v for k, v in saved.items() if k in fields})
        config.validate()
    except (TypeError, KeyError, ValueError) as err:
        raise _unreadable(ckpt, f"its config is not valid: {err}") from None
    info = make_env_info(config.env_id)
    policy = _policy(config, info)
    optimizer = make_optimizer(config)
    template = _init_state(config, policy, optimizer, int(info.obs_space.shape[0]), info.max_steps)
    state, _ = load_checkpoint(ckpt, template, config)
    threshold = (
        config.solve_threshold if config.solve_threshold is not None else info.reward_threshold
    )
    return TrainedPolicy(config, policy, state.params["policy"], threshold, int(state.episodes))
