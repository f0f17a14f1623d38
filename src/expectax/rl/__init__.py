"""Policy gradients with expectax: REINFORCE as rlax-style pure functions, policies, a pure-JAX
CartPole, a trainer for Gymnasium environments (``expectax rl``), and sequence-level policy
gradients for language-model-style training (:mod:`expectax.rl.sequence`: RLOO, GRPO, Dr. GRPO,
REINFORCE++, ReMax, KL k1/k2/k3, PPO clipping, GSPO/CISPO/SAPO/GMPO/VESPO, rollout
corrections) and their losses chunked over the vocabulary (:mod:`expectax.rl.vocab`).

The score-function part is the core's magic box (:func:`expectax.estimators.base.magic_box`):
:func:`reinforce_loss` is :class:`expectax.ScoreFunction`'s surrogate applied to the actions of
a trajectory.
"""

from expectax.rl import cartpole, sequence, vocab
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
    ADVANTAGE_ESTIMATORS,
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_AGG_MODES,
    ROLLOUT_CORRECTION_MODES,
    advantages,
    aggregate_loss,
    cispo_loss,
    clipped_surrogate,
    dr_grpo_advantages,
    dynamic_sampling_mask,
    gdpo_advantages,
    gmpo_loss,
    grpo_advantages,
    gspo_loss,
    importance_ratios,
    james_stein_advantages,
    kl_estimate,
    kl_loss,
    kl_penalized_rewards,
    opo_advantages,
    overlong_penalty,
    reinforce_advantages,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    rollout_correction_weights,
    sapo_loss,
    sequence_policy_loss,
    vespo_loss,
)
from expectax.rl.vocab import (
    chunked_kl_loss,
    chunked_log_probs,
    chunked_policy_loss,
    chunked_sequence_policy_loss,
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
    "ADVANTAGE_ESTIMATORS",
    "Config",
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_AGG_MODES",
    "MovingAverageState",
    "Policy",
    "ROLLOUT_CORRECTION_MODES",
    "TrainedPolicy",
    "TrainingError",
    "advantages",
    "aggregate_loss",
    "bernoulli_policy",
    "cartpole",
    "chunked_kl_loss",
    "chunked_log_probs",
    "chunked_policy_loss",
    "chunked_sequence_policy_loss",
    "cispo_loss",
    "clipped_surrogate",
    "discounted_returns",
    "dr_grpo_advantages",
    "dynamic_sampling_mask",
    "entropy_loss",
    "gaussian_policy",
    "gdpo_advantages",
    "gmpo_loss",
    "grpo_advantages",
    "gspo_loss",
    "importance_ratios",
    "james_stein_advantages",
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
    "opo_advantages",
    "overlong_penalty",
    "policy_for_space",
    "reinforce_advantages",
    "reinforce_loss",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
    "rollout_correction_weights",
    "sapo_loss",
    "save_checkpoint",
    "sequence",
    "sequence_policy_loss",
    "softmax_policy",
    "train",
    "value_loss",
    "vespo_loss",
    "vocab",
]
