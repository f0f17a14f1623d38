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
``benchmarks/sequence_pg.py`` use them; :func:`tiny_sequence` is the same policy as a
``compare`` problem (a Categorical over the 15 sequences).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "TinySequencePolicy",
    "gradient_samples",
    "surrogate_loss",
    "tiny_sequence",
]


@dataclasses.dataclass(frozen=True, eq=False)
class TinySequencePolicy:
    """An enumerable autoregressive policy with a reward per sequence.

    Attributes:
      vocab: ``V`` (token 0 is EOS).
      length: ``L``, the maximum number of tokens (EOS included).
      reward_scale, reward_shift: ``R(y) = scale · #\\{t: y_t = V−1\\} + shift``; the reward
        grows with the number of the last token, so it is correlated with length.
      seed: seed of the default parameters and of the reference policy.
    """

    vocab: int = 3
    length: int = 3
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.vocab, int) and self.vocab >= 2):
            raise ValueError(f"TinySequencePolicy: vocab must be an int ≥ 2, got {self.vocab!r}.")
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
        rewards = np.array(
            [
                self.reward_scale * sum(tok == v - 1 for tok in seq) + self.reward_shift
                for seq in seqs
            ],
            np.float32,
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
        """Exact E[R], KL(π‖π_ref), KL(π_ref‖π), E[R/|y|], E|y| and E[Σ_t k2]."""
        lp, lr = self.seq_logp(theta), self.seq_logp(theta_ref)
        p, pr = jnp.exp(lp), jnp.exp(lr)
        r = jnp.asarray(self._rewards)
        return {
            "reward": jnp.sum(p * r),
            "kl": jnp.sum(p * (lp - lr)),
            "reverse_kl": jnp.sum(pr * (lr - lp)),
            "reward_over_length": jnp.sum(p * r / self.lengths),
            "length": jnp.sum(p * self.lengths),
            "k2": jnp.sum(
                p * jnp.sum(0.5 * (self.token_logp(theta_ref) - self.token_logp(theta)) ** 2, -1)
            ),
        }

    def exact_grads(self, theta: jax.Array, theta_ref: jax.Array) -> dict[str, jax.Array]:
        """Exact gradients (w.r.t. ``theta``) of every entry of :meth:`exact_values`."""
        keys = ("reward", "kl", "reverse_kl", "reward_over_length")
        return {
            k: jax.grad(lambda th, k=k: self.exact_values(th, theta_ref)[k])(theta) for k in keys
        }

    def greedy_reward(self, theta: jax.Array) -> jax.Array:
        """Reward of the greedy completion (argmax at every step), ReMax's baseline."""
        best = jnp.argmax(jax.lax.stop_gradient(theta), axis=-1)[self._pid]
        is_greedy = jnp.all((best == self._tokens) | (self._mask == 0), axis=-1)
        return jnp.sum(jnp.where(is_greedy, jnp.asarray(self._rewards), 0.0))

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
    """
    from expectax.rl import sequence as seq

    b = policy.batch(theta, theta_ref, idx)
    r = b["rewards_gk"]
    if kl.endswith("-reward"):
        r = seq.kl_penalized_rewards(
            r, b["logp_gkt"], b["ref_logp_gkt"], b["mask_gkt"], beta, estimator=kl[:2]
        )
    adv = {
        "reinforce": lambda: seq.reinforce_advantages(r, baseline),
        "rloo": lambda: seq.rloo_advantages(r),
        "grpo": lambda: seq.grpo_advantages(r),
        "dr-grpo": lambda: seq.dr_grpo_advantages(r),
        "reinforce++": lambda: seq.reinforce_pp_advantages(r),
        "reinforce++-baseline": lambda: seq.reinforce_pp_advantages(r, group_baseline=True),
        "remax": lambda: seq.remax_advantages(r, b["greedy_rewards_g"]),
    }
    if advantage not in adv:
        raise ValueError(f"surrogate_loss: unknown advantage {advantage!r}; one of {list(adv)}.")
    old = None
    if theta_old is not None:
        old = jax.lax.stop_gradient(policy.token_logp(theta_old)[idx])
    loss = seq.sequence_policy_loss(
        b["logp_gkt"],
        adv[advantage](),
        b["mask_gkt"],
        old_logp_gkt=old,
        clip_eps=clip_eps,
        loss_agg_mode=loss_agg_mode,
    )
    if kl.endswith("loss"):
        level = "sequence" if "-seq-" in kl else "token"
        loss = loss + beta * seq.kl_loss(
            b["logp_gkt"],
            b["ref_logp_gkt"],
            b["mask_gkt"],
            estimator=kl[:2],
            loss_agg_mode=loss_agg_mode,
            level=level,
        )
    elif kl not in ("none",) and not kl.endswith("-reward"):
        raise ValueError(f"surrogate_loss: unknown kl {kl!r}.")
    return loss


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
    **variant: Any,
) -> np.ndarray:
    """Gradients of :func:`surrogate_loss` (ascent direction ``−∇ loss``), one per batch.

    Each row is the estimate from one independent batch of ``groups × k`` completions, so the
    rows' mean and standard error give the bias and its significance against an exact gradient.
    With ``variants`` (a list of keyword dicts for :func:`surrogate_loss`) every variant is
    evaluated on the *same* batches in one compiled function. With ``theta_old`` the batches
    are sampled from ``π_{θ_old}`` and the losses use its log-probabilities as ``old_logp_gkt``
    (a later PPO step on one batch); the gradient is still taken at ``theta``.

    Returns:
      ``(num_batches, P)`` for one variant (given as keywords), or ``(len(variants),
      num_batches, P)``.
    """
    single = variants is None
    variants = [variant] if single else list(variants)

    def one(key):
        sampler = theta if theta_old is None else theta_old
        idx = policy.sample(sampler, key, groups, k)
        extra = {} if theta_old is None else {"theta_old": theta_old}
        grad = jax.grad(surrogate_loss, argnums=1)
        return jnp.stack(
            [-grad(policy, theta, theta_ref, idx, **v, **extra).reshape(-1) for v in variants]
        )

    keys = jax.random.split(key, num_batches)
    fn = jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=min(chunk, num_batches)))
    out = np.moveaxis(np.asarray(fn(keys), np.float64), 1, 0)
    return out[0] if single else out


def tiny_sequence(
    vocab: int = 3, length: int = 3, reward_scale: float = 1.0, reward_shift: float = 0.0
):
    """``compare`` problem: ``E[R(y)]`` for a sequence ``y`` from the tiny autoregressive policy.

    The distribution is a Categorical over the enumerated sequences with logits
    ``log π_θ(y)`` (the sum of token log-probabilities), so the sample-level estimators of
    ``compare`` (score function with or without a leave-one-out baseline, i.e. REINFORCE and
    RLOO; ``UnorderedSet``) apply unchanged; the exact gradient is by enumeration. Params
    ``{"logits": (num_prefixes, V)}``.
    """
    import numpyro.distributions as dist

    import expectax as ex
    from expectax import baselines
    from expectax.problems import Problem

    pol = TinySequencePolicy(vocab, length, reward_scale, reward_shift)
    rewards = pol.rewards

    def f(params, x):
        return jnp.asarray(rewards)[x]

    def dist_fn(params):
        return dist.Categorical(logits=pol.seq_logp(params["logits"]))

    def exact_value(params):
        p = jnp.exp(pol.seq_logp(params["logits"]))
        return jnp.sum(p * jnp.asarray(rewards))

    return Problem(
        name="tiny-sequence",
        description=f"E[R(y)], y ~ autoregressive softmax policy, V={vocab}, L={length}, "
        f"R = {reward_scale:g}·#(token {vocab - 1}) + {reward_shift:g}",
        f=f,
        dist_fn=dist_fn,
        params={"logits": pol.init_params()},
        exact_value=exact_value,
        exact_grad=jax.grad(exact_value),
        estimators=(
            ex.ScoreFunction(),
            ex.ScoreFunction(baseline=baselines.LeaveOneOut()),
            ex.UnorderedSet(),
        ),
    )
