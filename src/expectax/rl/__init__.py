"""Policy gradients with expectax: REINFORCE as rlax-style pure functions, policies, a pure-JAX
CartPole, a trainer for Gymnasium environments (``expectax rl``), and sequence-level policy
gradients for language-model-style training (:mod:`expectax.rl.sequence`: RLOO, GRPO, Dr. GRPO,
REINFORCE++, ReMax, KL k1/k2/k3, PPO clipping).

The score-function part is the core's magic box (:func:`expectax.estimators.base.magic_box`):
:func:`reinforce_loss` is :class:`expectax.ScoreFunction`'s surrogate applied to the actions of
a trajectory.
"""

from expectax.rl import cartpole, sequence
from expectax.rl.losses import (
    MovingAverageState,
    discounted_returns,
    entropy_loss,
    leave_one_out_baseline,
    moving_average_baseline,
    moving_average_init,
    normalize_advantages,
    reinforce_loss,
    value_loss,
)
from expectax.rl.policies import (
    Policy,
    bernoulli_policy,
    gaussian_policy,
    policy_for_space,
    softmax_policy,
)
from expectax.rl.policy_io import TrainedPolicy, load_policy
from expectax.rl.sequence import (
    LOSS_AGG_MODES,
    aggregate_loss,
    clipped_surrogate,
    dr_grpo_advantages,
    grpo_advantages,
    importance_ratios,
    kl_estimate,
    kl_loss,
    kl_penalized_rewards,
    reinforce_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    sequence_policy_loss,
)

#: The Gymnasium trainer's names (``expectax rl``): it needs the ``apps`` extra (optax,
#: gymnasium), so it is imported on first use; :mod:`expectax.rl.sequence`, the losses and the
#: policies import with the core alone.
_TRAINER = ("Config", "TrainingError", "load_checkpoint", "make_jax_trainer", "save_checkpoint")


def __getattr__(name: str):
    # ``train`` is both the function and its module: importing the module makes
    # ``expectax.rl.train`` the module, which is callable (it calls the function).
    if name in _TRAINER or name == "train":
        import importlib

        return getattr(importlib.import_module("expectax.rl.train"), name)
    raise AttributeError(f"module 'expectax.rl' has no attribute {name!r}")


__all__ = [
    "Config",
    "LOSS_AGG_MODES",
    "MovingAverageState",
    "Policy",
    "TrainedPolicy",
    "TrainingError",
    "aggregate_loss",
    "bernoulli_policy",
    "cartpole",
    "clipped_surrogate",
    "discounted_returns",
    "dr_grpo_advantages",
    "entropy_loss",
    "gaussian_policy",
    "grpo_advantages",
    "importance_ratios",
    "kl_estimate",
    "kl_loss",
    "kl_penalized_rewards",
    "leave_one_out_baseline",
    "load_checkpoint",
    "load_policy",
    "make_jax_trainer",
    "moving_average_baseline",
    "moving_average_init",
    "normalize_advantages",
    "policy_for_space",
    "reinforce_advantages",
    "reinforce_loss",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
    "save_checkpoint",
    "sequence",
    "sequence_policy_loss",
    "softmax_policy",
    "train",
    "value_loss",
]
