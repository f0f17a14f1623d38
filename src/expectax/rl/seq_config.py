"""``expectax rl-seq``'s configuration: the variants, the options and :class:`SeqConfig`.

Separate from :mod:`expectax.rl.seq_demo` (the transformer and the training, which need
equinox) so that ``expectax rl-seq --help`` lists every flag and its choices without the
``seq`` extra installed.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "CORRECTIONS",
    "DEFAULT_VARIANTS",
    "KL_MODES",
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "REWARDS",
    "SCHEDULES",
    "VARIANTS",
    "SeqConfig",
]

#: variant -> (advantage estimator, default loss aggregation), as in each paper's recipe.
VARIANTS: dict[str, tuple[str, str]] = {
    "reinforce": ("reinforce", "seq-mean-token-sum"),  # moving-average baseline (Williams 1992)
    "rloo": ("rloo", "seq-mean-token-sum"),  # Ahmadian et al. (2024)
    "grpo": ("grpo", "seq-mean-token-mean"),  # Shao et al. (2024): std norm + per-seq length
    "dr-grpo": ("dr-grpo", "seq-mean-token-sum-norm"),  # Liu et al. (2025): constant L
    "reinforce++": ("reinforce++", "token-mean"),  # Hu (2025): batch normalisation, OpenRLHF
    "remax": ("remax", "seq-mean-token-sum"),  # Li et al. (2024): greedy baseline
}
DEFAULT_VARIANTS = ("reinforce", "rloo", "grpo", "dr-grpo", "reinforce++")
KL_MODES = (
    "none",
    "k1-reward",
    "k2-reward",
    "k3-reward",
    "k1-loss",
    "k2-loss",
    "k3-loss",
)
#: The policy losses of :mod:`expectax.rl.sequence` (``ppo``: ``sequence_policy_loss``, PPO's
#: clipped surrogate from the second update on a batch).
POLICY_LOSSES = ("ppo", "gspo", "cispo", "sapo", "gmpo", "vespo")
#: Off-policy corrections for the rollout engine (``rollout_correction_weights``): ``level-mode``
#: with ``truncate`` (TIS), ``mask`` (MIS), ``reject``, or ``is`` (plain ratios, no threshold).
CORRECTIONS = (
    "none",
    "token-is",
    "token-truncate",
    "token-mask",
    "token-reject",
    "sequence-is",
    "sequence-truncate",
    "sequence-mask",
    "sequence-reject",
)
REWARDS = ("exact", "partial")
SCHEDULES = ("constant", "cosine")
LOSS_AGG_MODES = (
    "seq-mean-token-sum",
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


@dataclasses.dataclass(frozen=True)
class SeqConfig:
    """One variant's training run (every seed of :func:`train` shares it).

    Attributes:
      variant: a key of :data:`VARIANTS`.
      digits: ``D``, the digits ``0 … D−1`` (the output vocabulary is ``D + 1`` with EOS).
      max_len: ``L``, tokens per completion at most (EOS included).
      min_target, max_target: the prompts' targets, uniform on ``[min_target, max_target]``
        (``max_target ≤ (D − 1) L``).
      reward: ``"exact"`` (1 if the sum is the target, else 0) or ``"partial"``.
      groups, group_size: ``G`` prompts per step and ``K`` completions per prompt.
      steps, learning_rate: Adam steps and step size (optax).
      kl, beta: KL handling (:data:`KL_MODES`) and coefficient ``β``.
      entropy: coefficient of an entropy bonus (the exact entropy of ``π(·|s, y_{<t})`` at every
        sampled position, aggregated as the loss; subtracted from the loss). 0: none.
      warmup, schedule: linear learning-rate warm-up steps, then ``"constant"`` or
        ``"cosine"`` decay (to 0 at ``steps``; optax's ``warmup_cosine_decay_schedule``).
      loss_agg_mode: override the variant's aggregation (``None``: the variant's own).
      baseline_decay: the moving average of ``"reinforce"``.
      d_model, heads, layers: the transformer's width, attention heads, blocks.
      eval_every: steps between exact evaluations (and per compiled chunk of steps).
      threshold: the success probability that counts as reaching the top reward.
      loss: the policy loss (:data:`POLICY_LOSSES`), with its own clip range, temperatures or
        kernel but the variant's aggregation (or ``loss_agg_mode``), not the loss's default
        (GSPO, SAPO: ``seq-mean-token-mean``; CISPO, VESPO: ``token-mean``), so that the first
        update is the variant's REINFORCE gradient; GMPO has no aggregation mode.
      epochs: gradient steps on each batch (PPO epochs, TRL's ``num_iterations``): the first is
        on-policy for the trainer; the later ones use the loss's ratio against the log-probs at
        sampling time (``ppo``: PPO's clip ``clip_eps``).
      clip_eps: PPO's clip range for ``loss="ppo"`` with ``epochs > 1``.
      rollout_mismatch: ``δ``: the completions are sampled by a rollout engine whose logits are
        the trainer's plus ``δ·u``, ``u`` a fixed standard-normal table per seed (prompt ×
        position × token), and it reports its own log-probs. 0: the trainer samples.
      correction: :data:`CORRECTIONS` (``rollout_correction_weights`` of the trainer's and the
        rollout engine's log-probs), threshold ``correction_threshold``.
    """

    variant: str = "rloo"
    digits: int = 5
    max_len: int = 4
    min_target: int = 0
    max_target: int = 12
    reward: str = "exact"
    groups: int = 16
    group_size: int = 16
    steps: int = 600
    learning_rate: float = 2e-3
    kl: str = "k2-loss"
    beta: float = 0.05
    entropy: float = 0.02
    warmup: int = 50
    schedule: str = "cosine"
    loss_agg_mode: str | None = None
    baseline_decay: float = 0.9
    d_model: int = 32
    heads: int = 2
    layers: int = 2
    eval_every: int = 100
    threshold: float = 0.95
    loss: str = "ppo"
    epochs: int = 1
    clip_eps: float = 0.2
    rollout_mismatch: float = 0.0
    correction: str = "none"
    correction_threshold: float = 2.0

    @property
    def agg(self) -> str:
        return self.loss_agg_mode or VARIANTS[self.variant][1]

    @property
    def label(self) -> str:
        """The run's name in tables and CSVs: the variant, then what differs from the defaults
        (``rloo``, ``rloo/gspo``, ``rloo/mismatch=0.5/sequence-truncate``)."""
        parts = [self.variant]
        if self.loss != "ppo":
            parts.append(self.loss)
        if self.epochs != 1:
            parts.append(f"epochs={self.epochs}")
        if self.rollout_mismatch:
            parts.append(f"mismatch={self.rollout_mismatch:g}")
        if self.correction != "none":
            parts.append(self.correction)
        return "/".join(parts)

    @property
    def num_targets(self) -> int:
        return self.max_target - self.min_target + 1

    def validate(self) -> SeqConfig:
        """Raise ``ValueError`` naming the field for an inconsistent configuration."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(
            self.variant in VARIANTS,
            f"variant: unknown {self.variant!r}; choose from {', '.join(VARIANTS)}.",
        )
        for name in ("digits", "max_len", "groups", "steps", "d_model", "heads", "layers"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}.")
        need(self.digits >= 2, f"digits must be at least 2, got {self.digits}.")
        need(
            self.max_len <= 6,
            f"max_len must be at most 6 (the evaluation enumerates every completion), got "
            f"{self.max_len}.",
        )
        top = (self.digits - 1) * self.max_len
        need(
            0 <= self.min_target <= self.max_target <= top,
            f"targets must satisfy 0 <= min_target <= max_target <= (digits-1)*max_len = {top}, "
            f"got [{self.min_target}, {self.max_target}].",
        )
        need(
            math.isfinite(self.entropy) and self.entropy >= 0,
            f"entropy must be ≥ 0, got {self.entropy}.",
        )
        need(
            isinstance(self.warmup, int) and 0 <= self.warmup < self.steps,
            f"warmup must be an integer in [0, steps), got {self.warmup!r}.",
        )
        need(
            self.schedule in SCHEDULES,
            f"schedule: unknown {self.schedule!r}; choose from {', '.join(SCHEDULES)}.",
        )
        need(self.reward in REWARDS, f"reward must be one of {', '.join(REWARDS)}.")
        need(self.kl in KL_MODES, f"kl: unknown {self.kl!r}; choose from {', '.join(KL_MODES)}.")
        need(math.isfinite(self.beta) and self.beta >= 0, f"beta must be ≥ 0, got {self.beta}.")
        need(
            self.loss_agg_mode is None or self.loss_agg_mode in LOSS_AGG_MODES,
            f"loss_agg_mode: unknown {self.loss_agg_mode!r}; one of {', '.join(LOSS_AGG_MODES)}.",
        )
        need(
            self.d_model % self.heads == 0,
            f"d_model ({self.d_model}) must be a multiple of heads ({self.heads}).",
        )
        need(
            0.0 <= self.baseline_decay < 1.0,
            f"baseline_decay must be in [0, 1), got {self.baseline_decay}.",
        )
        need(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"learning_rate must be positive, got {self.learning_rate}.",
        )
        adv = VARIANTS[self.variant][0]
        need(
            not (adv in ("rloo", "grpo", "dr-grpo") and self.group_size < 2),
            f"group_size must be at least 2 for {self.variant} (a group baseline), got "
            f"{self.group_size}.",
        )
        need(self.group_size >= 1, f"group_size must be positive, got {self.group_size}.")
        need(
            isinstance(self.eval_every, int) and self.eval_every >= 1,
            f"eval_every must be a positive integer, got {self.eval_every!r}.",
        )
        need(0 < self.threshold <= 1, f"threshold must be in (0, 1], got {self.threshold}.")
        need(
            self.loss in POLICY_LOSSES,
            f"loss: unknown {self.loss!r}; choose from {', '.join(POLICY_LOSSES)}.",
        )
        need(
            isinstance(self.epochs, int) and self.epochs >= 1,
            f"epochs must be a positive integer, got {self.epochs!r}.",
        )
        need(
            math.isfinite(self.clip_eps) and self.clip_eps > 0,
            f"clip_eps must be > 0, got {self.clip_eps}.",
        )
        need(
            math.isfinite(self.rollout_mismatch) and self.rollout_mismatch >= 0,
            f"rollout_mismatch must be a finite number ≥ 0, got {self.rollout_mismatch}.",
        )
        need(
            self.correction in CORRECTIONS,
            f"correction: unknown {self.correction!r}; choose from {', '.join(CORRECTIONS)}.",
        )
        need(
            self.correction_threshold > 0,
            f"correction_threshold must be > 0, got {self.correction_threshold}.",
        )
        need(
            not (self.loss == "vespo" and self.correction != "none"),
            "correction: loss vespo weighs each sequence by its own kernel of the rollout ratio "
            "π/μ; drop --correction (or use another --loss).",
        )
        return self
