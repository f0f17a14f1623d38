"""The settings of an ``expectax rl`` run: :class:`Config` (every hyperparameter, each a flag),
the optimiser it names (:func:`make_optimizer`), and :class:`TrainingError`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optax

from expectax import runio

__all__ = ["BACKENDS", "BASELINES", "JAX_ENVS", "Config", "TrainingError", "make_optimizer"]

BASELINES = ("none", "moving_average", "leave_one_out", "critic")
BACKENDS = ("auto", "gymnasium", "jax")
JAX_ENVS = ("CartPole-v1",)


class TrainingError(ValueError):
    """Training stopped because it cannot go on usefully (NaN/inf, a gradient stuck at zero)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every hyperparameter of a run (each is a flag of ``expectax rl``).

    The defaults solve CartPole-v1 (see ``docs/rl.md`` for how often, on held-out seeds).
    """

    env_id: str = "CartPole-v1"
    backend: str = "auto"
    policy: str = "auto"
    hidden: tuple[int, ...] = (128,)
    input_gain: float = 3.0
    episodes: int = 200
    batch_episodes: int = 4
    learning_rate: float = 1e-2
    lr_final_fraction: float = 1.0
    adam_b1: float = 0.5  # less momentum than Adam's 0.9: fewer collapses (docs/rl.md)
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None
    gamma: float = 0.99
    baseline: str = "leave_one_out"
    normalize_advantages: bool = False
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    eval_every: int = 0
    eval_episodes: int = 100
    confirm_episodes: int = 100
    confirm_margin: float = 1.5  # solved iff confirming mean - margin * SE >= threshold
    solve_threshold: float | None = None
    stop_when_solved: bool = True
    max_zero_grad_batches: int = 20
    late_return: float | None = None
    late_batch_factor: int = 1
    skip_zero_grad_steps: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and what to do."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}.")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}.")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(
                f"hidden sizes must be positive integers (e.g. --hidden 128), got "
                f"{list(self.hidden)}."
            )
        for name in ("episodes", "batch_episodes", "eval_episodes"):
            v = getattr(self, name)
            if v < 1:
                raise ValueError(f"{name} must be ≥ 1, got {v}.")
        if self.confirm_episodes < 100:
            raise ValueError(
                f"confirm_episodes must be ≥ 100 (a smaller evaluation is too noisy to call a "
                f"run solved), got {self.confirm_episodes}."
            )
        if not (math.isfinite(self.confirm_margin) and self.confirm_margin >= 0):
            raise ValueError(
                f"confirm_margin must be a finite number ≥ 0 (standard errors of the confirming "
                f"evaluation; 0: its mean alone decides), got {self.confirm_margin}: e.g. "
                "--confirm-margin 1."
            )
        if self.baseline == "leave_one_out" and self.batch_episodes < 2:
            raise ValueError(
                f"batch_episodes must be ≥ 2 with the leave-one-out baseline, got "
                f"{self.batch_episodes}: use --batch-episodes 2 or more, or another --baseline."
            )
        if self.episodes < self.batch_episodes:
            raise ValueError(
                f"episodes ({self.episodes}) must be at least batch_episodes "
                f"({self.batch_episodes})."
            )
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f"lr_final_fraction must be in [0, 1], got {self.lr_final_fraction}.")
        for name in ("adam_b1", "adam_b2"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                flag = name.replace("_", "-")
                raise ValueError(f"{name} must be in [0, 1), got {v}: e.g. --{flag} 0.5.")
        if not (math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ValueError(
                f"adam_eps must be a positive finite number, got {self.adam_eps}: e.g. "
                "--adam-eps 1e-8."
            )
        if self.max_grad_norm is not None and not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise ValueError(
                f"max_grad_norm must be a positive finite number (or None: no clipping), got "
                f"{self.max_grad_norm}: e.g. --max-grad-norm 100, or leave the flag out."
            )
        for name in ("learning_rate", "gamma", "input_gain", "entropy_coef", "value_coef"):
            v = getattr(self, name)
            if not math.isfinite(v):
                flag = "lr" if name == "learning_rate" else name.replace("_", "-")
                raise ValueError(
                    f"{name} must be a finite number, got {v}: pass a finite --{flag}."
                )
        if self.solve_threshold is not None and not math.isfinite(self.solve_threshold):
            raise ValueError(f"solve_threshold must be finite, got {self.solve_threshold}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        if self.learning_rate <= 0:
            raise ValueError(
                f"learning_rate must be positive, got {self.learning_rate}: e.g. --lr 0.01."
            )
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be ≥ 0 (0: never), got {self.eval_every}.")
        if self.late_batch_factor < 1:
            raise ValueError(f"late_batch_factor must be ≥ 1, got {self.late_batch_factor}.")
        if self.late_return is not None and not math.isfinite(self.late_return):
            raise ValueError(f"late_return must be finite, got {self.late_return}.")
        if self.max_zero_grad_batches < 1:
            raise ValueError(
                f"max_zero_grad_batches must be ≥ 1, got {self.max_zero_grad_batches}."
            )
        runio.check_seed(self.seed, "seed")
        if self.backend == "jax" and self.env_id not in JAX_ENVS:
            raise ValueError(
                f"backend 'jax' implements only CartPole-v1, got env {self.env_id!r}: use "
                "--backend gymnasium for other environments."
            )

    @property
    def resolved_backend(self) -> str:
        """``"jax"`` for ``backend="auto"`` on an environment with a pure-JAX version (CartPole-v1),
        else ``"gymnasium"``."""
        if self.backend == "auto":
            return "jax" if self.env_id in JAX_ENVS else "gymnasium"
        return self.backend

    @property
    def num_batches(self) -> int:
        return self.episodes // self.batch_episodes


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam (``adam_b1``, ``adam_b2``, ``adam_eps``) at ``config.learning_rate``, decayed
    linearly to ``lr_final_fraction`` of it over the budget's batches (1.0: constant); with
    ``max_grad_norm``, the gradient is first clipped to that global norm."""
    lr: Any = config.learning_rate
    if config.lr_final_fraction != 1.0:
        lr = optax.linear_schedule(
            config.learning_rate,
            config.learning_rate * config.lr_final_fraction,
            max(config.num_batches - 1, 1),
        )
    adam = optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    if config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)
