r"""A tiny autoregressive policy whose every sequence can be enumerated: exact sequence-RL answers.

:class:`TinySequencePolicy` is a tabular autoregressive policy over a vocabulary of ``V``
tokens (token 0 is EOS) and at most ``L`` tokens: one row of logits per prefix that has not yet
ended, ``π(y_t | y_{<t}) = softmax(θ[prefix(y_{<t})])``. With ``V = 3, L = 3`` there are 7
prefixes (21 parameters) and 15 complete sequences, so ``E[R]``, ``KL(π‖π_ref)`` and their
gradients are exact sums (differentiated by autodiff). Completions have lengths 1 to ``L``
(EOS counts as a token), so length normalisations matter.

:func:`surrogate_loss` builds the loss of one variant (advantage estimator × loss aggregation ×
KL handling) from :mod:`expectax.rl.sequence` on a sampled batch, and :func:`gradient_samples`
draws independent batches and returns one gradient per batch, for bias and variance against
:meth:`TinySequencePolicy.exact_grads`. ``tests/test_rl_sequence.py`` and
``benchmarks/sequence_pg.py`` use them. :func:`tiny_sequence` is the same policy as a
``compare`` problem whose estimators are the variants (:class:`SequenceVariant`, one sample =
one group of K completions), so ``expectax compare --problem tiny-sequence`` (or
``tiny-sequence-kl``) measures their bias, variance and cost against the exact gradient and
recommends among those unbiased for the objective (:func:`unbiased_for_objective`).
:func:`tiny_sequence_offpolicy` (``tiny-sequence-offpolicy``, ``-kl``) does the same with a
rollout engine whose policy differs from the trainer's, and the off-policy corrections.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from expectax.estimators.base import Estimator, pytree_dataclass, static_field

__all__ = [
    "CORRECTIONS",
    "KL_MODES",
    "POLICY_LOSSES",
    "SequenceVariant",
    "TinySequencePolicy",
    "exact_gradient_moments",
    "gradient_samples",
    "offpolicy_variants",
    "sequence_variants",
    "surrogate_loss",
    "tiny_sequence",
    "tiny_sequence_kl",
    "tiny_sequence_offpolicy",
    "tiny_sequence_offpolicy_kl",
    "unbiased_for_objective",
]


class _DeprecatedKeys(dict):
    """A dict whose old key ``"reverse_kl"`` maps to ``"forward_kl"`` with a warning."""

    def __missing__(self, key):
        if key == "reverse_kl" and "forward_kl" in self:
            warnings.warn(
                "'reverse_kl' named KL(π_ref‖π), which is the forward (mass-covering) KL; use "
                "'forward_kl'. 'reverse_kl' will be removed.",
                DeprecationWarning,
                stacklevel=2,
            )
            return self["forward_kl"]
        raise KeyError(key)


@dataclasses.dataclass(frozen=True, eq=False)
class TinySequencePolicy:
    """An enumerable autoregressive policy with a reward per sequence.

    Attributes:
      vocab: ``V`` (token 0 is EOS).
      length: ``L``, the maximum number of tokens (EOS included).
      reward_scale, reward_shift: ``R(y) = scale · #\\{t: y_t = V−1\\} + shift``; the reward
        grows with the number of the last token, so it is correlated with length.
      seed: seed of the default parameters and of the reference policy.
      reward_kind: ``"count"`` (the reward above) or ``"binary"``
        (``R(y) = scale · 1[token V−1 occurs in y] + shift``, a verifiable 0/1 reward).
    """

    vocab: int = 3
    length: int = 3
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    seed: int = 0
    reward_kind: str = "count"

    def __post_init__(self):
        if not (isinstance(self.vocab, int) and self.vocab >= 2):
            raise ValueError(f"TinySequencePolicy: vocab must be an int ≥ 2, got {self.vocab!r}.")
        if self.reward_kind not in ("count", "binary"):
            raise ValueError(
                f"TinySequencePolicy: reward_kind must be 'count' or 'binary', got "
                f"{self.reward_kind!r}."
            )
        if not (isinstance(self.length, int) and 1 <= self.length <= 5):
            raise ValueError(
                f"TinySequencePolicy: length must be an int in [1, 5] (enumeration), got "
                f"{self.length!r}."
            )
        v, n = self.vocab, self.length
        prefixes: dict[tuple, int] = {}
        for t in range(n):
            for p in itertools.product(range(1, v), repeat=t):
                prefixes[p] = len(prefixes)
        seqs = []
        for t in range(1, n + 1):  # sequences ending with EOS at position t
            seqs += [(*p, 0) for p in itertools.product(range(1, v), repeat=t - 1)]
        seqs += list(itertools.product(range(1, v), repeat=n))  # full length, no EOS
        tokens = np.zeros((len(seqs), n), np.int32)
        mask = np.zeros((len(seqs), n), np.float32)
        pid = np.zeros((len(seqs), n), np.int32)
        for s, seq in enumerate(seqs):
            for t, tok in enumerate(seq):
                tokens[s, t] = tok
                mask[s, t] = 1.0
                pid[s, t] = prefixes[tuple(seq[:t])]

        def raw(seq):
            hits = sum(tok == v - 1 for tok in seq)
            return hits if self.reward_kind == "count" else float(hits > 0)

        rewards = np.array(
            [self.reward_scale * raw(seq) + self.reward_shift for seq in seqs], np.float32
        )
        object.__setattr__(self, "_tokens", tokens)
        object.__setattr__(self, "_mask", mask)
        object.__setattr__(self, "_pid", pid)
        object.__setattr__(self, "_rewards", rewards)
        object.__setattr__(self, "num_prefixes", len(prefixes))
        object.__setattr__(self, "num_sequences", len(seqs))

    # ---- tables (NumPy; converted when used, so constructing one does no JAX work)
    @property
    def tokens(self) -> np.ndarray:
        """``(S, L)`` tokens of every sequence, 0-padded after EOS."""
        return self._tokens

    @property
    def mask(self) -> np.ndarray:
        """``(S, L)`` 1 for the tokens of each sequence (EOS included)."""
        return self._mask

    @property
    def rewards(self) -> np.ndarray:
        """``(S,)`` reward of every sequence."""
        return self._rewards

    @property
    def lengths(self) -> np.ndarray:
        return self._mask.sum(-1)

    def init_params(self, which: str = "policy") -> jax.Array:
        """Default logits ``(num_prefixes, V)``: ``"policy"`` or ``"reference"`` (seeded)."""
        rng = np.random.default_rng([self.seed, 0 if which == "policy" else 1])
        return jnp.asarray(rng.normal(0.0, 0.7, (self.num_prefixes, self.vocab)), jnp.float32)

    # ---- log-probabilities and exact expectations
    def token_logp(self, theta: jax.Array) -> jax.Array:
        """``(S, L)`` ``log π(y_t|y_{<t})`` of every sequence's tokens (0 on padding)."""
        logp = jax.nn.log_softmax(theta, axis=-1)[self._pid, self._tokens]
        return logp * self._mask

    def seq_logp(self, theta: jax.Array) -> jax.Array:
        """``(S,)`` log-probability of every complete sequence."""
        return jnp.sum(self.token_logp(theta), axis=-1)

    def exact_values(self, theta: jax.Array, theta_ref: jax.Array) -> dict[str, jax.Array]:
        """Exact E[R], KL(π‖π_ref), KL(π_ref‖π), E[R/|y|], E|y|, E[1/|y|] and E[Σ_t k2].

        ``"kl"`` is ``KL(π‖π_ref)``, the reverse (mode-seeking) KL that RL fine-tuning
        penalises; ``"forward_kl"`` is ``KL(π_ref‖π)``, the forward (mass-covering) one. The
        key ``"reverse_kl"``, which named ``KL(π_ref‖π)`` by mistake before, still returns it
        with a ``DeprecationWarning``.
        """
        lp, lr = self.seq_logp(theta), self.seq_logp(theta_ref)
        p, pr = jnp.exp(lp), jnp.exp(lr)
        r = jnp.asarray(self._rewards)
        return _DeprecatedKeys(
            {
                "reward": jnp.sum(p * r),
                "kl": jnp.sum(p * (lp - lr)),
                "forward_kl": jnp.sum(pr * (lr - lp)),
                "reward_over_length": jnp.sum(p * r / self.lengths),
                "length": jnp.sum(p * self.lengths),
                "inverse_length": jnp.sum(p / self.lengths),
                "k2": jnp.sum(
                    p
                    * jnp.sum(0.5 * (self.token_logp(theta_ref) - self.token_logp(theta)) ** 2, -1)
                ),
            }
        )

    def exact_grads(self, theta: jax.Array, theta_ref: jax.Array) -> dict[str, jax.Array]:
        """Exact gradients (w.r.t. ``theta``) of the entries of :meth:`exact_values`.

        Keys ``"reward"``, ``"kl"``, ``"forward_kl"``, ``"reward_over_length"``,
        ``"inverse_length"`` (and the deprecated ``"reverse_kl"``, see :meth:`exact_values`).
        """
        keys = ("reward", "kl", "forward_kl", "reward_over_length", "inverse_length")
        return _DeprecatedKeys(
            {k: jax.grad(lambda th, k=k: self.exact_values(th, theta_ref)[k])(theta) for k in keys}
        )

    def behaviour_params(self, theta: jax.Array, mismatch: float, seed: int = 0) -> jax.Array:
        """A rollout engine's policy ``μ``: ``θ + mismatch · u`` with a fixed random direction.

        ``u`` has i.i.d. standard normal entries (seeded by ``seed`` and the policy's seed), so
        ``mismatch`` is the typical logit error of the rollout engine relative to the trainer;
        ``mismatch = 0`` is the trainer's policy itself.
        """
        if not (np.isfinite(mismatch) and mismatch >= 0):
            raise ValueError(
                f"behaviour_params: mismatch must be finite and ≥ 0, got {mismatch!r}."
            )
        rng = np.random.default_rng([self.seed, 2, seed])
        u = rng.normal(0.0, 1.0, (self.num_prefixes, self.vocab))
        return theta + jnp.asarray(mismatch * u, theta.dtype)

    def greedy_index(self, theta: jax.Array) -> jax.Array:
        """Index of the greedy completion (argmax at every step), ReMax's baseline."""
        best = jnp.argmax(jax.lax.stop_gradient(theta), axis=-1)[self._pid]
        is_greedy = jnp.all((best == self._tokens) | (self._mask == 0), axis=-1)
        return jnp.argmax(is_greedy)

    def greedy_reward(self, theta: jax.Array) -> jax.Array:
        """Reward of the greedy completion, ReMax's baseline."""
        return jnp.asarray(self._rewards)[self.greedy_index(theta)]

    # ---- sampling
    def sample(self, theta: jax.Array, key: jax.Array, groups: int, k: int) -> jax.Array:
        """``(groups, k)`` indices of sequences sampled from ``π_θ`` (exact, by enumeration)."""
        logits = jax.lax.stop_gradient(self.seq_logp(theta))
        return jax.random.categorical(key, logits, shape=(groups, k))

    def batch(self, theta, theta_ref, idx) -> dict[str, jax.Array]:
        """The arrays a trainer would have for sampled indices ``idx`` ``(G, K)``."""
        return {
            "rewards_gk": jnp.asarray(self._rewards)[idx],
            "logp_gkt": self.token_logp(theta)[idx],
            "ref_logp_gkt": jax.lax.stop_gradient(self.token_logp(theta_ref)[idx]),
            "mask_gkt": jnp.asarray(self._mask)[idx],
            "greedy_rewards_g": jnp.full((idx.shape[0],), self.greedy_reward(theta)),
            "lengths_gk": jnp.asarray(self.lengths)[idx],
        }


def surrogate_loss(
    policy: TinySequencePolicy,
    theta: jax.Array,
    theta_ref: jax.Array,
    idx: jax.Array,
    advantage: str = "rloo",
    loss_agg_mode: str = "seq-mean-token-sum",
    kl: str = "none",
    beta: float = 0.0,
    baseline: float = 0.0,
    theta_old: jax.Array | None = None,
    clip_eps: float | None = None,
    theta_behaviour: jax.Array | None = None,
    loss: str = "ppo",
    correction: str | None = None,
    threshold: float = 2.0,
) -> jax.Array:
    """The loss of one sequence-policy-gradient variant on the batch ``idx`` ``(G, K)``.

    Args:
      advantage: ``"reinforce"`` (constant ``baseline``), ``"rloo"``, ``"grpo"``, ``"dr-grpo"``,
        ``"reinforce++"``, ``"reinforce++-baseline"``, ``"remax"``.
      loss_agg_mode: :func:`expectax.rl.sequence.aggregate_loss`'s mode.
      kl: ``"none"``; ``"k1-reward"``/``"k2-reward"``/``"k3-reward"`` (penalty in the reward,
        :func:`~expectax.rl.sequence.kl_penalized_rewards`); ``"k1-loss"``/``"k2-loss"``/
        ``"k3-loss"`` (per-token loss term) or ``"k2-seq-loss"``/``"k3-seq-loss"`` (sequence
        level, :func:`~expectax.rl.sequence.kl_loss`).
      beta: the KL coefficient.
      baseline: the constant of ``advantage="reinforce"``.
      theta_old, clip_eps: the policy that sampled ``idx`` (a later PPO step on the batch) and
        the clip range of :func:`~expectax.rl.sequence.clipped_surrogate`.
      theta_behaviour: a rollout engine's policy ``μ`` that sampled ``idx`` while the trainer's
        log-probs are those of ``theta`` (the first step on the batch, with a rollout/trainer
        mismatch; :meth:`TinySequencePolicy.behaviour_params`); its log-probs are the batch's
        ``rollout_logp_gkt``.
      loss: the policy loss (:data:`POLICY_LOSSES`): ``"ppo"``
        (:func:`~expectax.rl.sequence.sequence_policy_loss`), ``"gspo"``, ``"cispo"``,
        ``"sapo"``, ``"gmpo"`` or ``"vespo"`` (their functions in :mod:`expectax.rl.sequence`
        with their defaults; VESPO takes the rollout engine's log-probs as its behaviour policy).
      correction: ``None`` or ``"<level>-<mode>"`` of
        :func:`~expectax.rl.sequence.rollout_correction_weights` (``"token-truncate"``,
        ``"sequence-mask"``, …; ``"<level>-is"``: plain importance weights, no threshold).
      threshold: the correction's ``C``.
    """
    old = None
    if theta_old is not None:
        old = jax.lax.stop_gradient(policy.token_logp(theta_old)[idx])
    b = policy.batch(theta, theta_ref, idx)
    if theta_behaviour is not None:
        b["rollout_logp_gkt"] = jax.lax.stop_gradient(policy.token_logp(theta_behaviour)[idx])
    return _batch_loss(
        b,
        advantage=advantage,
        loss_agg_mode=loss_agg_mode,
        kl=kl,
        beta=beta,
        baseline=baseline,
        old_logp_gkt=old,
        clip_eps=clip_eps,
        loss=loss,
        correction=correction,
        threshold=threshold,
    )


def _batch_loss(
    b: dict[str, jax.Array],
    advantage: str = "rloo",
    loss_agg_mode: str = "seq-mean-token-sum",
    kl: str = "none",
    beta: float = 0.0,
    baseline: float = 0.0,
    old_logp_gkt: jax.Array | None = None,
    clip_eps: float | None = None,
    loss: str = "ppo",
    correction: str | None = None,
    threshold: float = 2.0,
) -> jax.Array:
    """:func:`surrogate_loss` on the arrays of :meth:`TinySequencePolicy.batch`."""
    from expectax.rl import sequence as seq

    if loss not in POLICY_LOSSES:
        raise ValueError(f"surrogate_loss: unknown loss {loss!r}; one of {list(POLICY_LOSSES)}.")
    if correction is not None and correction not in CORRECTIONS:
        raise ValueError(
            f"surrogate_loss: unknown correction {correction!r}; None or one of "
            f"{list(CORRECTIONS)}."
        )
    rollout = b.get("rollout_logp_gkt")
    if (correction is not None or loss == "vespo") and rollout is None:
        raise ValueError(
            "surrogate_loss: correction and loss='vespo' need the rollout engine's log-probs; "
            "pass theta_behaviour."
        )
    if correction is not None and loss == "vespo":
        raise ValueError(
            f"surrogate_loss: loss='vespo' corrects for the rollout engine itself (its weight "
            f"is the rollout ratio); correction={correction!r} would be ignored. Pass "
            "correction=None with vespo, or another loss."
        )
    weights = None
    if correction is not None:
        level, mode = correction.split("-")
        trainer_old = b["logp_gkt"] if old_logp_gkt is None else old_logp_gkt
        weights = seq.rollout_correction_weights(
            jax.lax.stop_gradient(trainer_old),
            rollout,
            b["mask_gkt"],
            importance_sampling_level=level,
            mode="truncate" if mode == "is" else mode,
            threshold=jnp.inf if mode == "is" else threshold,
        )
    r = b["rewards_gk"]
    if kl.endswith("-reward"):
        r = seq.kl_penalized_rewards(
            r, b["logp_gkt"], b["ref_logp_gkt"], b["mask_gkt"], beta, estimator=kl[:2]
        )
    if advantage not in seq.ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"surrogate_loss: unknown advantage {advantage!r}; one of "
            f"{list(seq.ADVANTAGE_ESTIMATORS)}."
        )
    if kl not in KL_MODES:
        raise ValueError(f"surrogate_loss: unknown kl {kl!r}; one of {list(KL_MODES)}.")
    adv = seq.advantages(
        advantage,
        r,
        baseline=baseline,
        greedy_rewards_g=b.get("greedy_rewards_g"),
        lengths_gk=b.get("lengths_gk"),
    )
    lp, m = b["logp_gkt"], b["mask_gkt"]
    if loss == "ppo":
        total = seq.sequence_policy_loss(
            lp,
            adv,
            m,
            old_logp_gkt=old_logp_gkt,
            clip_eps=clip_eps,
            loss_agg_mode=loss_agg_mode,
            rollout_is_weights_gkt=weights,
        )
    elif loss == "vespo":
        total = seq.vespo_loss(lp, rollout, adv, m, loss_agg_mode=loss_agg_mode)
    else:
        fn = {
            "gspo": seq.gspo_loss,
            "cispo": seq.cispo_loss,
            "sapo": seq.sapo_loss,
            "gmpo": seq.gmpo_loss,
        }[loss]
        kw = {} if loss == "gmpo" else {"loss_agg_mode": loss_agg_mode}
        total = fn(lp, old_logp_gkt, adv, m, rollout_is_weights_gkt=weights, **kw)
    if kl.endswith("loss"):
        level = "sequence" if "-seq-" in kl else "token"
        is_weighted = "-is-" in kl
        total = total + beta * seq.kl_loss(
            lp,
            b["ref_logp_gkt"],
            m,
            estimator=kl[:2],
            loss_agg_mode=loss_agg_mode,
            level=level,
            importance_weighted=is_weighted,
            old_logp_gkt=rollout if is_weighted else None,
        )
    return total


def gradient_samples(
    policy: TinySequencePolicy,
    theta: jax.Array,
    theta_ref: jax.Array,
    key: jax.Array,
    num_batches: int,
    groups: int = 1,
    k: int = 4,
    variants: Sequence[dict[str, Any]] | None = None,
    chunk: int = 4096,
    theta_old: jax.Array | None = None,
    theta_behaviour: jax.Array | None = None,
    **variant: Any,
) -> np.ndarray:
    """Gradients of :func:`surrogate_loss` (ascent direction ``−∇ loss``), one per batch.

    Each row is the estimate from one independent batch of ``groups × k`` completions, so the
    rows' mean and standard error give the bias and its significance against an exact gradient.
    With ``variants`` (a list of keyword dicts for :func:`surrogate_loss`) every variant is
    evaluated on the *same* batches in one compiled function. With ``theta_old`` the batches
    are sampled from ``π_{θ_old}`` and the losses use its log-probabilities as ``old_logp_gkt``
    (a later PPO step on one batch); the gradient is still taken at ``theta``. With
    ``theta_behaviour`` (a rollout engine's policy ``μ``,
    :meth:`TinySequencePolicy.behaviour_params`) the batches are sampled from ``μ`` and its
    log-probs are the rollout engine's (for ``correction`` and ``loss="vespo"``), as in
    :func:`exact_gradient_moments`.

    Returns:
      ``(num_batches, P)`` for one variant (given as keywords), or ``(len(variants),
      num_batches, P)``.
    """
    single = variants is None
    variants = [variant] if single else list(variants)

    sampler = theta if theta_old is None else theta_old
    sampler = sampler if theta_behaviour is None else theta_behaviour
    extra = {} if theta_old is None else {"theta_old": theta_old}
    if theta_behaviour is not None:
        extra["theta_behaviour"] = theta_behaviour

    def one(key):
        idx = policy.sample(sampler, key, groups, k)
        grad = jax.grad(surrogate_loss, argnums=1)
        return jnp.stack(
            [-grad(policy, theta, theta_ref, idx, **v, **extra).reshape(-1) for v in variants]
        )

    keys = jax.random.split(key, num_batches)
    fn = jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=min(chunk, num_batches)))
    out = np.moveaxis(np.asarray(fn(keys), np.float64), 1, 0)
    return out[0] if single else out


#: The ``kl`` options of :func:`surrogate_loss`.
KL_MODES = (
    "none",
    "k1-reward",
    "k2-reward",
    "k3-reward",
    "k1-loss",
    "k2-loss",
    "k3-loss",
    "k2-seq-loss",
    "k3-seq-loss",
    "k3-is-loss",
    "k3-is-seq-loss",
)

#: The ``loss`` options of :func:`surrogate_loss`.
POLICY_LOSSES = ("ppo", "gspo", "cispo", "sapo", "gmpo", "vespo")

#: The ``correction`` options of :func:`surrogate_loss` (level-mode of the rollout correction).
CORRECTIONS = tuple(
    f"{level}-{mode}"
    for level in ("token", "sequence")
    for mode in ("is", "truncate", "mask", "reject")
)


def exact_gradient_moments(
    policy: TinySequencePolicy,
    theta: jax.Array,
    theta_ref: jax.Array,
    k: int,
    groups: int = 1,
    variants: Sequence[dict[str, Any]] | None = None,
    theta_behaviour: jax.Array | None = None,
    condition: str | None = None,
    chunk: int = 4096,
    **variant: Any,
) -> dict[str, np.ndarray]:
    """Exact mean and variance of each variant's gradient estimate, by enumerating every batch.

    Every batch of ``groups × k`` completions (``S^(G·K)`` of them for ``S`` sequences) is
    weighted by its probability under the sampling policy (``theta_behaviour``, a rollout
    engine's, or ``theta``), and the ascent direction ``−∇ loss`` of :func:`surrogate_loss` is
    computed on it at ``theta``: the expected estimate and its covariance are exact sums, no
    sampling. ``condition="informative"`` conditions on batches whose groups all have unequal
    rewards (DAPO's dynamic sampling, which resamples until the batch is full).

    Returns:
      ``{"mean": (V, P), "var": (V,) tr Cov, "prob": P(condition)}`` for ``len(variants)``
      variants (or ``(P,)``, a scalar for one variant given as keywords).
    """
    single = variants is None
    variants = [variant] if single else list(variants)
    n_seq, n = policy.num_sequences, groups * k
    if n_seq**n > 2_000_000:
        raise ValueError(
            f"exact_gradient_moments: {n_seq}^{n} = {n_seq**n} batches is too many to enumerate; "
            "use fewer completions (groups × k) or a shorter policy."
        )
    if condition not in (None, "informative"):
        raise ValueError("exact_gradient_moments: condition must be None or 'informative'.")
    idx = np.array(list(itertools.product(range(n_seq), repeat=n)), np.int32)
    idx = idx.reshape(-1, groups, k)
    sampler = theta if theta_behaviour is None else theta_behaviour
    log_q = np.asarray(policy.seq_logp(sampler), np.float64)
    prob = np.exp(log_q[idx].sum(axis=(1, 2)))
    if condition == "informative":
        r = policy.rewards[idx]
        keep = np.all(r.max(-1) > r.min(-1), axis=-1)
        total = prob[keep].sum()
        prob = np.where(keep, prob, 0.0) / total
    else:
        total = 1.0
    extra = {} if theta_behaviour is None else {"theta_behaviour": theta_behaviour}
    grad = jax.grad(surrogate_loss, argnums=1)

    def one(i):
        return jnp.stack(
            [-grad(policy, theta, theta_ref, i, **v, **extra).reshape(-1) for v in variants]
        )

    fn = jax.jit(lambda ii: jax.lax.map(one, ii, batch_size=min(chunk, len(ii))))
    g = np.asarray(fn(jnp.asarray(idx)), np.float64)  # (B, V, P)
    mean = np.einsum("b,bvp->vp", prob, g)
    second = np.einsum("b,bv->v", prob, np.sum(g**2, axis=-1))
    var = np.maximum(second - np.sum(mean**2, axis=-1), 0.0)
    out = {"mean": mean, "var": var, "prob": float(total)}
    if single:
        out["mean"], out["var"] = mean[0], float(var[0])
    return out


def unbiased_for_objective(
    advantage: str,
    loss_agg_mode: str = "seq-mean-token-sum",
    kl: str = "none",
    beta: float = 0.0,
    objective_beta: float = 0.0,
    *,
    loss: str = "ppo",
    correction: str | None = None,
    mismatch: float = 0.0,
    threshold: float = 2.0,
) -> bool:
    """Whether a variant's expected gradient is ``∇(E_π[R] − β·KL(π‖π_ref))`` for every ``θ``.

    By design (each case measured in ``docs/sequence-policy-gradients.md`` and tested in
    ``tests/test_rl_sequence.py``, ``tests/test_rl_sequence_losses.py`` and
    ``tests/test_sequence_offpolicy_compare.py``): an advantage whose baseline does not depend
    on the sample (``reinforce``, ``rloo``, ``remax``), the per-sequence token sum
    ``seq-mean-token-sum``, a policy loss that is REINFORCE on the first step on a batch
    (``ppo``, ``cispo``, ``sapo``, ``vespo``, and ``gspo``, whose length-normalised sequence
    ratio has the gradient ``(1/|y|)∇log π(y)``, undone by the token sum; GMPO's geometric mean
    is normalised by the length whatever the aggregation, so biased), and for
    ``objective_beta > 0`` the KL as ``k1`` in the reward, as the sequence-level ``k2`` loss
    term or as the sequence-level ratio-weighted k3 (``k3-is-seq-loss``), with
    ``beta == objective_beta``. Everything else (GRPO's std,
    Dr. GRPO's ``(K−1)/K``, REINFORCE++'s batch normalisation, token-mean and per-sequence length
    normalisation, Dr. GRPO's constant, k2/k3 in the reward, per-token k2/k3 loss terms, a KL
    ignored or with another β) is biased for that objective.

    With a rollout/trainer ``mismatch > 0`` (samples from the rollout engine's ``μ ≠ π``) only
    untruncated *sequence-level* importance weights correct the policy loss
    (``correction="sequence-is"``, or ``"sequence-truncate"``/``"sequence-mask"`` with
    ``threshold = inf``): no correction, token-level IS/TIS/MIS (the prefix's distribution stays
    μ's), ``"<level>-reject"`` and sequence TIS/MIS with a finite threshold (biased as soon as a
    sequence's ratio exceeds it) are biased, and so is VESPO (its kernel reshapes the weight).
    The KL must then be corrected too: ``k1-reward`` (the weights multiply the penalised
    reward) or ``k3-is-seq-loss``; the sequence-level ``k2`` loss term is not reweighted.
    ``mismatch = 0`` (μ = π) makes every correction weight 1.
    """
    if advantage not in ("reinforce", "rloo", "remax") or loss_agg_mode != "seq-mean-token-sum":
        return False
    if loss not in ("ppo", "cispo", "sapo", "vespo", "gspo"):
        return False
    off_policy = mismatch > 0
    if off_policy:
        exact = correction == "sequence-is" or (
            correction in ("sequence-truncate", "sequence-mask") and threshold == np.inf
        )
        if loss == "vespo" or not exact:
            return False
    if objective_beta == 0:
        return kl == "none" or beta == 0
    if beta != objective_beta:
        return False
    if off_policy:
        return kl in ("k1-reward", "k3-is-seq-loss")
    return kl in ("k1-reward", "k2-seq-loss", "k3-is-seq-loss")


@pytree_dataclass
class SequenceVariant(Estimator):
    r"""One sequence-policy-gradient variant as a ``compare`` estimator on the tiny policy.

    A *sample* is one group of ``k`` completions of the prompt, so ``num_samples`` is the
    number of groups ``G`` per estimate: each estimate draws ``(G, k)`` sequences from
    ``dist_fn(params)`` (the Categorical over the enumerated sequences of :func:`tiny_sequence`),
    evaluates the reward ``f`` on each, and returns the ascent direction ``−∇ loss`` of
    :func:`surrogate_loss` (advantage × loss aggregation × KL handling, from
    :mod:`expectax.rl.sequence`) on that batch. The value is the batch's mean reward (minus
    ``objective_beta`` × the mean sequence-level k1, when the objective has a KL).

    The batch is one joint estimate (REINFORCE++ normalises over the batch, ``token-mean``
    divides by its token count), so the estimator refuses ``per_sample_grads`` and chunking.
    ``unbiased`` is :func:`unbiased_for_objective`: ``compare`` recommends only those.

    With ``mismatch > 0`` the batch comes from a rollout engine: the completions are drawn from
    ``μ = policy.behaviour_params(θ, mismatch)`` instead of ``dist_fn(params)`` (the trainer's
    ``π_θ``), the rollout engine's log-probs are μ's, and the loss (``loss``, ``correction``,
    ``threshold`` as in :func:`surrogate_loss`) is taken at ``θ`` (the first step on the batch).
    The value is then the sequence-importance-weighted mean reward, an unbiased estimate of
    ``E_π[R]``.

    Attributes:
      policy: the :class:`TinySequencePolicy` (params are ``{"logits": (num_prefixes, V)}``;
        the reference policy is ``policy.init_params("reference")``).
      label: the row's name.
      k: completions per group.
      advantage, loss_agg_mode, kl, beta, baseline: as in :func:`surrogate_loss`.
      objective_beta: the β of the problem's objective ``E[R] − β·KL``.
      loss, correction, threshold: the policy loss (:data:`POLICY_LOSSES`), the rollout
        correction (``None`` or one of :data:`CORRECTIONS`) and its ``C``, as in
        :func:`surrogate_loss`.
      mismatch: ``δ`` of the rollout engine's policy
        (:meth:`TinySequencePolicy.behaviour_params`); 0: the trainer samples itself.
    """

    policy: TinySequencePolicy = static_field(repr=False)
    label: str = static_field()
    k: int = static_field(default=4)
    advantage: str = static_field(default="rloo")
    loss_agg_mode: str = static_field(default="seq-mean-token-sum")
    kl: str = static_field(default="none")
    beta: float = static_field(default=0.0)
    baseline: float = static_field(default=0.0)
    objective_beta: float = static_field(default=0.0)
    loss: str = static_field(default="ppo")
    correction: str | None = static_field(default=None)
    threshold: float = static_field(default=2.0)
    mismatch: float = static_field(default=0.0)

    joint_samples = True

    def __post_init__(self):
        from expectax.rl.sequence import LOSS_AGG_MODES

        where = f"SequenceVariant({self.label!r})"
        if not isinstance(self.policy, TinySequencePolicy):
            raise TypeError(
                f"{where}: policy must be a TinySequencePolicy, got {type(self.policy).__name__}."
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(
                f"{where}: k (completions per group) must be an int ≥ 1, got {self.k!r}."
            )
        if self.k < 2 and self.advantage not in ("reinforce", "remax", "reinforce++"):
            raise ValueError(
                f"{where}: advantage={self.advantage!r} uses the group, so k must be ≥ 2, got "
                f"k={self.k}. Use advantage='reinforce' or 'remax' for single completions."
            )
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(
                f"{where}: loss_agg_mode must be one of {', '.join(LOSS_AGG_MODES)}; got "
                f"{self.loss_agg_mode!r}."
            )
        if self.kl not in KL_MODES:
            raise ValueError(f"{where}: kl must be one of {', '.join(KL_MODES)}; got {self.kl!r}.")
        if self.beta < 0 or self.objective_beta < 0:
            raise ValueError(
                f"{where}: beta and objective_beta must be ≥ 0, got {self.beta}, "
                f"{self.objective_beta}."
            )
        if self.loss not in POLICY_LOSSES:
            raise ValueError(
                f"{where}: loss must be one of {', '.join(POLICY_LOSSES)}; got {self.loss!r}."
            )
        if self.correction is not None and self.correction not in CORRECTIONS:
            raise ValueError(
                f"{where}: correction must be None or one of {', '.join(CORRECTIONS)}; got "
                f"{self.correction!r}."
            )
        if not (isinstance(self.threshold, int | float) and self.threshold > 0):
            raise ValueError(
                f"{where}: threshold must be a number > 0 (inf: no bound), got {self.threshold!r}."
            )
        if not (
            isinstance(self.mismatch, int | float)
            and not isinstance(self.mismatch, bool)
            and np.isfinite(self.mismatch)
            and self.mismatch >= 0
        ):
            raise ValueError(
                f"{where}: mismatch (the rollout engine's logit error δ) must be a finite "
                f"number ≥ 0, got {self.mismatch!r}."
            )

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return unbiased_for_objective(
            self.advantage,
            self.loss_agg_mode,
            self.kl,
            self.beta,
            self.objective_beta,
            loss=self.loss,
            correction=self.correction,
            mismatch=self.mismatch,
            threshold=self.threshold,
        )

    @property
    def loss_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`surrogate_loss` (and :func:`exact_gradient_moments`,
        :func:`gradient_samples`) that give this variant's loss."""
        return dict(
            advantage=self.advantage,
            loss_agg_mode=self.loss_agg_mode,
            kl=self.kl,
            beta=self.beta,
            baseline=self.baseline,
            loss=self.loss,
            correction=self.correction,
            threshold=self.threshold,
        )

    def behaviour(self, theta: jax.Array) -> jax.Array:
        """The rollout engine's logits ``μ`` at the trainer's ``theta`` (``theta`` if δ = 0)."""
        return self.policy.behaviour_params(jax.lax.stop_gradient(theta), self.mismatch)

    @property
    def name(self) -> str:
        return self.label

    def evaluations(self, num_samples: int, dist: Any = None) -> int:
        # K rewards per group, plus one greedy completion per group (prompt) for ReMax
        return num_samples * (self.k + (self.advantage == "remax"))

    def terms(self, ctx: Any, key: jax.Array, num_samples: int) -> jax.Array:
        if ctx.stacked:
            raise ValueError(
                f"{self.name}: a batch of groups is one joint estimate (batch normalisation and "
                "token-mean couple the groups), so per-sample gradients are not defined; use "
                "ex.expectation or ex.compare, or gradient_samples for one gradient per batch."
            )
        params = ctx.params
        if not (isinstance(params, dict) and "logits" in params):
            raise ValueError(
                f"{self.name}: params must be {{'logits': (num_prefixes, V)}} of the tiny "
                f"sequence policy (expectax.problems.sequence.tiny_sequence), got "
                f"{jax.tree_util.tree_structure(params)}."
            )
        pol = self.policy
        theta = params["logits"]
        theta_ref = pol.init_params("reference")
        shape = (num_samples, self.k)
        if self.mismatch:  # the rollout engine's samples, from μ
            import numpyro.distributions as dist

            mu = self.behaviour(theta)
            idx = dist.Categorical(logits=pol.seq_logp(mu)).sample(key, shape)
        else:
            mu = jax.lax.stop_gradient(theta)
            idx = ctx.dist.sample(key, shape)
        idx = jax.lax.stop_gradient(idx)
        b = pol.batch(theta, theta_ref, idx)
        b["rollout_logp_gkt"] = jax.lax.stop_gradient(pol.token_logp(mu)[idx])
        b["rewards_gk"] = ctx.f(idx.reshape(-1)).reshape(shape)
        if self.advantage == "remax":
            greedy = ctx.f(pol.greedy_index(theta)[None])
            b["greedy_rewards_g"] = jnp.broadcast_to(greedy, (num_samples,))
        ascent = -_batch_loss(b, **self.loss_options)
        per_seq = b["rewards_gk"]
        if self.objective_beta:
            k1 = jnp.sum((b["logp_gkt"] - b["ref_logp_gkt"]) * b["mask_gkt"], axis=-1)
            per_seq = per_seq - self.objective_beta * k1
        if self.mismatch:  # sequence importance weights π/μ: unbiased for E_π
            log_w = jnp.sum((b["logp_gkt"] - b["rollout_logp_gkt"]) * b["mask_gkt"], axis=-1)
            per_seq = jnp.exp(log_w) * per_seq
        value = jnp.mean(per_seq)
        surrogate = jax.lax.stop_gradient(value) + ascent - jax.lax.stop_gradient(ascent)
        return jnp.broadcast_to(surrogate, (num_samples,))


def sequence_variants(
    policy: TinySequencePolicy, k: int = 4, beta: float = 0.0, baseline: float = 0.0
) -> tuple[SequenceVariant, ...]:
    """The variants :func:`tiny_sequence` compares by default.

    ``beta = 0`` (objective ``E[R]``): REINFORCE without and with a constant ``baseline``,
    RLOO, ReMax (unbiased); Dr. GRPO, GRPO (token sum and its original per-sequence token
    mean), RLOO with DAPO's token-mean, REINFORCE++ and REINFORCE++-baseline (biased).
    ``beta > 0`` (objective ``E[R] − β·KL(π‖π_ref)``): RLOO with k1 in the reward or the
    sequence-level k2 loss, ReMax and REINFORCE (constant baseline) with k1 in the reward
    (unbiased); RLOO ignoring the KL, RLOO with k3 in the reward or the per-token k2 or k3 loss,
    GRPO with its k3 loss and per-sequence token mean, Dr. GRPO with k1 in the reward (biased).
    """

    def v(label: str, **kw: Any) -> SequenceVariant:
        return SequenceVariant(policy, label, k=k, objective_beta=beta, **kw)

    b = f"b={baseline:.3g}"
    if beta == 0:
        return (
            v("REINFORCE b=0", advantage="reinforce"),
            v(f"REINFORCE {b}", advantage="reinforce", baseline=baseline),
            v("RLOO", advantage="rloo"),
            v("ReMax", advantage="remax"),
            v("Dr. GRPO", advantage="dr-grpo"),
            v("GRPO (÷std)", advantage="grpo"),
            v("GRPO seq-mean-token-mean", advantage="grpo", loss_agg_mode="seq-mean-token-mean"),
            v("RLOO token-mean (DAPO)", advantage="rloo", loss_agg_mode="token-mean"),
            v("REINFORCE++", advantage="reinforce++"),
            v("REINFORCE++-baseline", advantage="reinforce++-baseline"),
        )
    kl = {"beta": beta}
    return (
        v("RLOO + k1 reward", advantage="rloo", kl="k1-reward", **kl),
        v("RLOO + k2 seq. loss", advantage="rloo", kl="k2-seq-loss", **kl),
        v("ReMax + k1 reward", advantage="remax", kl="k1-reward", **kl),
        v(
            f"REINFORCE {b} + k1 reward",
            advantage="reinforce",
            baseline=baseline,
            kl="k1-reward",
            **kl,
        ),
        v("RLOO (KL ignored)", advantage="rloo"),
        v("RLOO + k3 reward", advantage="rloo", kl="k3-reward", **kl),
        v("RLOO + k2 token loss", advantage="rloo", kl="k2-loss", **kl),
        v("RLOO + k3 token loss", advantage="rloo", kl="k3-loss", **kl),
        v(
            "GRPO (k3 loss; seq-mean-token-mean)",
            advantage="grpo",
            kl="k3-loss",
            loss_agg_mode="seq-mean-token-mean",
            **kl,
        ),
        v("Dr. GRPO + k1 reward", advantage="dr-grpo", kl="k1-reward", **kl),
    )


def tiny_sequence(
    vocab: int = 3,
    length: int = 3,
    reward_scale: float = 1.0,
    reward_shift: float = 0.0,
    k: int = 4,
    beta: float = 0.0,
):
    r"""``compare`` problem: the sequence-RL variants on the tiny autoregressive policy.

    The objective is ``J(θ) = E[R(y)] − β·KL(π_θ‖π_ref)`` (``β = 0``: ``E[R]``), with
    ``J`` and ``∇J`` exact by enumeration. ``dist_fn`` is a Categorical over the enumerated
    sequences with logits ``log π_θ(y)`` and ``f`` the reward of a sequence; the default
    estimators are :func:`sequence_variants`, for which one *sample* is a group of ``k``
    completions (``compare(..., num_samples=G)``: G groups per estimate). Variants biased for
    ``J`` are reported with their measured bias and never recommended. The sample-level core
    estimators (``ScoreFunction``, ``UnorderedSet``, ...) still apply to ``f`` and ``dist_fn``,
    with ``num_samples`` counting sequences. Params ``{"logits": (num_prefixes, V)}``.

    Registered as ``tiny-sequence`` (these defaults) and ``tiny-sequence-kl`` (``beta=0.5``).
    For other options on the command line, a problem file ``p.py`` with
    ``def problem(): return tiny_sequence(k=8, length=4)`` and ``--problem p.py:problem``.
    """
    import numpyro.distributions as dist

    from expectax.problems import Problem

    pol = TinySequencePolicy(vocab, length, reward_scale, reward_shift)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"tiny_sequence: k (completions per group) must be an int ≥ 2, got {k!r}.")
    if not beta >= 0:
        raise ValueError(f"tiny_sequence: beta must be ≥ 0, got {beta!r}.")
    rewards = pol.rewards
    theta_ref = pol.init_params("reference")

    def f(params, x):
        return jnp.asarray(rewards)[x]

    def dist_fn(params):
        return dist.Categorical(logits=pol.seq_logp(params["logits"]))

    def exact_value(params):
        values = pol.exact_values(params["logits"], theta_ref)
        return values["reward"] - beta * values["kl"] if beta else values["reward"]

    params = {"logits": pol.init_params()}
    baseline = round(float(pol.exact_values(params["logits"], theta_ref)["reward"]), 2)
    objective = f"E[R] − {beta:g}·KL(π‖π_ref)" if beta else "E[R]"
    return Problem(
        name="tiny-sequence-kl" if beta else "tiny-sequence",
        description=f"{objective}, y ~ autoregressive softmax policy, V={vocab}, L={length}, "
        f"R = {reward_scale:g}·#(token {vocab - 1}) + {reward_shift:g}; one sample = one group "
        f"of K={k} completions",
        f=f,
        dist_fn=dist_fn,
        params=params,
        exact_value=exact_value,
        exact_grad=jax.grad(exact_value),
        estimators=sequence_variants(pol, k, beta, baseline),
    )


def tiny_sequence_kl(**kwargs: Any):
    """:func:`tiny_sequence` with ``beta=0.5`` (objective ``E[R] − 0.5·KL(π‖π_ref)``)."""
    kwargs.setdefault("beta", 0.5)
    return tiny_sequence(**kwargs)


def offpolicy_variants(
    policy: TinySequencePolicy,
    k: int = 4,
    beta: float = 0.0,
    mismatch: float = 1.0,
    threshold: float = 2.0,
) -> tuple[SequenceVariant, ...]:
    """The variants :func:`tiny_sequence_offpolicy` compares: a rollout engine ``μ ≠ π``.

    ``beta = 0`` (objective ``E_π[R]``): RLOO with untruncated sequence-level importance
    weights, ReMax and CISPO (token sum) with them (unbiased); RLOO without correction, with
    token-level TIS and MIS, with sequence-level TIS and MIS (threshold ``C``) and with
    sequence rejection, GSPO with sequence TIS, VESPO (biased: the sequence TIS/MIS ones
    whenever a sequence's ratio ``π/μ`` exceeds ``C``, which the defaults δ = 1, C = 2 make
    happen). ``beta > 0`` (objective ``E_π[R] − β·KL(π‖π_ref)``): k1 in the reward and the
    sequence-level ratio-weighted k3 loss, each with sequence IS (unbiased); k1 in the reward
    without correction and with token TIS, GRPO's k3 loss with token TIS, DeepSeek-V3.2's
    per-token ratio-weighted k3 and the sequence-level k2 loss with sequence IS (biased).
    """

    def v(label: str, **kw: Any) -> SequenceVariant:
        kw.setdefault("advantage", "rloo")
        return SequenceVariant(
            policy,
            label,
            k=k,
            objective_beta=beta,
            mismatch=mismatch,
            threshold=threshold,
            **kw,
        )

    c = f"C={threshold:g}"
    if beta == 0:
        return (
            v("RLOO + sequence IS", correction="sequence-is"),
            v("ReMax + sequence IS", advantage="remax", correction="sequence-is"),
            v("CISPO token sum + sequence IS", loss="cispo", correction="sequence-is"),
            v("RLOO, no correction"),
            v(f"RLOO + token TIS {c}", correction="token-truncate"),
            v(f"RLOO + token MIS {c}", correction="token-mask"),
            v(f"RLOO + sequence TIS {c}", correction="sequence-truncate"),
            v(f"RLOO + sequence MIS {c}", correction="sequence-mask"),
            v(f"RLOO + sequence reject {c}", correction="sequence-reject"),
            v(
                f"GSPO + sequence TIS {c}",
                advantage="grpo",
                loss="gspo",
                loss_agg_mode="seq-mean-token-mean",
                correction="sequence-truncate",
            ),
            v("VESPO token sum", loss="vespo"),
        )
    kl = {"beta": beta}
    return (
        v("k1 reward + sequence IS", kl="k1-reward", correction="sequence-is", **kl),
        v(
            "k3×ratio seq. loss + sequence IS",
            kl="k3-is-seq-loss",
            correction="sequence-is",
            **kl,
        ),
        v("k1 reward, no correction", kl="k1-reward", **kl),
        v(f"k1 reward + token TIS {c}", kl="k1-reward", correction="token-truncate", **kl),
        v(f"k3 token loss + token TIS {c}", kl="k3-loss", correction="token-truncate", **kl),
        v(
            "k3×ratio token loss + sequence IS",
            kl="k3-is-loss",
            correction="sequence-is",
            **kl,
        ),
        v("k2 seq. loss + sequence IS", kl="k2-seq-loss", correction="sequence-is", **kl),
    )


def tiny_sequence_offpolicy(
    vocab: int = 3,
    length: int = 3,
    reward_scale: float = 1.0,
    reward_shift: float = 0.0,
    k: int = 4,
    beta: float = 0.0,
    mismatch: float = 1.0,
    threshold: float = 2.0,
):
    r"""``compare`` problem: :func:`tiny_sequence` with a rollout engine that is not the trainer.

    The objective is the trainer's, ``J(θ) = E_π[R(y)] − β·KL(π_θ‖π_ref)``, exact by
    enumeration, but the variants' completions come from the rollout engine's
    ``μ = θ + δ·u`` (:meth:`TinySequencePolicy.behaviour_params`, ``δ = mismatch``) and their
    losses are the first step on the batch at ``θ``, with the off-policy corrections of
    :func:`expectax.rl.sequence.rollout_correction_weights` (threshold ``C = threshold``); see
    :func:`offpolicy_variants`. Only untruncated sequence-level importance weights are unbiased
    by design (:func:`unbiased_for_objective`); the others are flagged and never recommended,
    with their bias measured against ``∇J``. ``dist_fn`` and ``f`` are the trainer's (the
    sample-level core estimators still sample ``π``). Params ``{"logits": (num_prefixes, V)}``.

    Registered as ``tiny-sequence-offpolicy`` (these defaults: δ = 1, where some sequences'
    ratio π/μ exceeds C = 2) and ``tiny-sequence-offpolicy-kl`` (``beta=0.5``).
    """
    if not (isinstance(mismatch, int | float) and np.isfinite(mismatch) and mismatch > 0):
        raise ValueError(
            f"tiny_sequence_offpolicy: mismatch must be a finite number > 0 (the rollout "
            f"engine's logit error; 0 is tiny_sequence), got {mismatch!r}."
        )
    prob = tiny_sequence(vocab, length, reward_scale, reward_shift, k, beta)
    pol = prob.estimators[0].policy
    theta = prob.params["logits"]
    lp = np.asarray(pol.seq_logp(theta), np.float64)
    lq = np.asarray(pol.seq_logp(pol.behaviour_params(theta, mismatch)), np.float64)
    name = "tiny-sequence-offpolicy-kl" if beta else "tiny-sequence-offpolicy"
    description = (
        f"{prob.description}; sampled by a rollout engine μ = θ + {mismatch:g}·u "
        f"(KL(μ‖π) = {float(np.sum(np.exp(lq) * (lq - lp))):.3g}, "
        f"max π/μ = {float(np.exp(np.max(lp - lq))):.3g}), C = {threshold:g}"
    )
    return dataclasses.replace(
        prob,
        name=name,
        description=description,
        estimators=offpolicy_variants(pol, k, beta, mismatch, threshold),
    )


def tiny_sequence_offpolicy_kl(**kwargs: Any):
    """:func:`tiny_sequence_offpolicy` with ``beta=0.5``."""
    kwargs.setdefault("beta", 0.5)
    return tiny_sequence_offpolicy(**kwargs)
