"""What the trainer knows about an environment (:class:`EnvInfo`, read from Gymnasium's
registry by :func:`make_env_info`) and the policy for its spaces."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import numpy as np

from expectax.rl import cartpole
from expectax.rl.config import Config
from expectax.rl.policies import Policy, policy_for_space

__all__ = ["EnvInfo", "make_env_info"]


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """What the trainer needs to know about an environment."""

    env_id: str
    obs_space: Any
    action_space: Any
    max_steps: int
    reward_threshold: float | None
    vectorization_mode: str


def make_env_info(env_id: str) -> EnvInfo:
    """Look an environment up in Gymnasium's registry; unknown ids list close matches."""
    import gymnasium as gym

    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown environment id {env_id!r} (not in gymnasium's registry).{hint} "
            'List them with `python -c "import gymnasium; gymnasium.pprint_registry()"`.'
        )
    spec = gym.spec(env_id)
    env = gym.make(env_id)
    try:
        max_steps = spec.max_episode_steps
        if max_steps is None:
            raise ValueError(
                f"environment {env_id!r} has no time limit (max_episode_steps); REINFORCE "
                "needs episodes that end: register it with max_episode_steps."
            )
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
        return EnvInfo(
            env_id,
            env.observation_space,
            env.action_space,
            int(max_steps),
            spec.reward_threshold,
            mode,
        )
    finally:
        env.close()


def _policy(config: Config, info_or_none: EnvInfo | None = None) -> Policy:
    import gymnasium as gym

    if info_or_none is None:
        obs_space = gym.spaces.Box(-np.inf, np.inf, (cartpole.OBS_DIM,), np.float32)
        action_space = gym.spaces.Discrete(cartpole.NUM_ACTIONS)
    else:
        obs_space, action_space = info_or_none.obs_space, info_or_none.action_space
    return policy_for_space(
        config.policy, obs_space, action_space, tuple(config.hidden), config.input_gain
    )
