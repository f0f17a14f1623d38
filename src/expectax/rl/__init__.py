"""Policy gradients with expectax: REINFORCE as rlax-style pure functions, policies, a pure-JAX
CartPole, and a trainer for Gymnasium environments (``expectax rl``).

The score-function part is the core's magic box (:func:`expectax.estimators.base.magic_box`):
:func:`reinforce_loss` is :class:`expectax.ScoreFunction`'s surrogate applied to the actions of
a trajectory.
"""

from expectax.rl import cartpole
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
from expectax.rl.train import (
    Config,
    TrainingError,
    load_checkpoint,
    make_jax_trainer,
    save_checkpoint,
    train,
)

__all__ = [
    "Config",
    "MovingAverageState",
    "Policy",
    "TrainedPolicy",
    "TrainingError",
    "bernoulli_policy",
    "cartpole",
    "discounted_returns",
    "entropy_loss",
    "gaussian_policy",
    "leave_one_out_baseline",
    "load_checkpoint",
    "load_policy",
    "make_jax_trainer",
    "moving_average_baseline",
    "moving_average_init",
    "normalize_advantages",
    "policy_for_space",
    "reinforce_loss",
    "save_checkpoint",
    "softmax_policy",
    "train",
    "value_loss",
]
