r"""A small transformer trained from scratch with sequence policy gradients (``expectax rl-seq``).

The task has a verifiable reward: the prompt is a target sum ``s``; the policy emits digits
``0 … D−1`` and then EOS (at most ``L`` tokens, EOS included; a completion of ``L`` digits ends
without EOS) and gets reward 1 when the digits sum to ``s`` (``reward="exact"``) or partial credit
``max(0, 1 − |Σ − s|/(D − 1))`` (``reward="partial"``). Every target in
``[min_target, max_target]`` can be reached, so the top reward is 1 for every prompt.

The policy is a pre-LayerNorm causal transformer written with `equinox
<https://docs.kidger.site/equinox/>`_ (an ``eqx.Module`` is a pytree of arrays, so ``jax.grad``,
``jax.jit`` and ``jax.vmap`` apply to it directly, and it adds only equinox and jaxtyping to the
dependencies: the optional extra ``expectax[seq]``). Its output layer starts at zero, so the
initial policy, which is also the reference policy of the KL penalty, is uniform over the
``D + 1`` tokens at every step.

One compilation trains every seed at once: the models of the seeds are stacked
(``eqx.filter_vmap`` over the initialisation keys), one training step is ``jax.vmap`` over the
seed axis, and ``lax.scan`` runs ``eval_every`` steps inside one ``jax.jit`` call. Generation
is a ``lax.scan`` over positions that recomputes the whole (short) sequence at each step (no KV
cache). The sequences are short enough to enumerate (``Σ_{n<L} Dⁿ + Dᴸ`` completions per
prompt), so the evaluation is exact: the probability of success under sampling, the greedy
completion's reward and ``KL(π‖π_ref)`` are sums over every completion of every prompt.

Each variant is an advantage estimator and a loss aggregation from :mod:`expectax.rl.sequence`
(:data:`VARIANTS`), with the same KL handling for all (``kl``: a k1/k2/k3 penalty in the reward or
a k1/k2/k3 loss term, coefficient ``beta``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:
    import equinox as eqx
except ImportError as err:  # the optional extra
    raise ImportError(
        'equinox is not installed; pip install "expectax[seq]" (or pip install equinox)'
    ) from err

from expectax.rl.seq_config import (  # re-exported: the names users of seq_demo know
    DEFAULT_VARIANTS,
    KL_MODES,
    LOSS_AGG_MODES,
    REWARDS,
    SCHEDULES,
    VARIANTS,
    SeqConfig,
)

__all__ = [
    "DEFAULT_VARIANTS",
    "KL_MODES",
    "LOSS_AGG_MODES",
    "REWARDS",
    "SCHEDULES",
    "VARIANTS",
    "SeqConfig",
    "TransformerPolicy",
    "digit_sums",
    "enumerate_completions",
    "exact_evaluation",
    "rewards_for",
    "rollout_completion",
    "sample_completion",
    "token_logp",
    "train",
]


# ---------------------------------------------------------------------------------------------
# Tokens: digits 0..D-1, EOS = D, PAD = D + 1, the prompt "target s" = D + 2 + (s − min_target).


def _eos(c: SeqConfig) -> int:
    return c.digits


def _pad(c: SeqConfig) -> int:
    return c.digits + 1


def _prompt_token(c: SeqConfig, target: jax.Array) -> jax.Array:
    return c.digits + 2 + (target - c.min_target)


class _Block(eqx.Module):
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, d_model: int, heads: int, key: jax.Array):
        k1, k2 = jax.random.split(key)
        self.ln1 = eqx.nn.LayerNorm(d_model)
        self.attn = eqx.nn.MultiheadAttention(heads, d_model, key=k1)
        self.ln2 = eqx.nn.LayerNorm(d_model)
        self.mlp = eqx.nn.MLP(d_model, d_model, 4 * d_model, 1, activation=jax.nn.gelu, key=k2)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = jax.vmap(self.ln1)(x)
        x = x + self.attn(h, h, h, mask=mask)
        return x + jax.vmap(self.mlp)(jax.vmap(self.ln2)(x))


class TransformerPolicy(eqx.Module):
    """A causal transformer ``π(y_t | s, y_{<t})`` over ``D + 1`` output tokens.

    ``model(prompt_token, completion)`` returns the ``(L, D + 1)`` logits of every position at
    once (teacher forcing): position ``t`` sees the prompt and ``completion[:t]``.
    """

    embed: eqx.nn.Embedding
    pos: jax.Array
    blocks: tuple
    ln_f: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, config: SeqConfig, key: jax.Array):
        c = config
        keys = jax.random.split(key, c.layers + 3)
        vocab_in = c.digits + 2 + c.num_targets
        self.embed = eqx.nn.Embedding(vocab_in, c.d_model, key=keys[0])
        self.pos = 0.02 * jax.random.normal(keys[1], (c.max_len, c.d_model))
        self.blocks = tuple(_Block(c.d_model, c.heads, k) for k in keys[3:])
        self.ln_f = eqx.nn.LayerNorm(c.d_model)
        head = eqx.nn.Linear(c.d_model, c.digits + 1, key=keys[2])
        # zero output layer: the initial (= reference) policy is uniform at every step
        self.head = eqx.tree_at(lambda h: (h.weight, h.bias), head, replace_fn=jnp.zeros_like)

    def __call__(self, prompt_token: jax.Array, completion: jax.Array) -> jax.Array:
        length = completion.shape[0]
        inputs = jnp.concatenate([prompt_token[None], completion[:-1]])
        x = jax.vmap(self.embed)(inputs) + self.pos[:length]
        mask = jnp.tril(jnp.ones((length, length), bool))
        for block in self.blocks:
            x = block(x, mask)
        return jax.vmap(self.head)(jax.vmap(self.ln_f)(x))


def token_logp(
    model: TransformerPolicy, config: SeqConfig, target: jax.Array, completion, mask
) -> jax.Array:
    """``(L,)`` log-probabilities of the completion's tokens (0 on padding)."""
    return _token_logp_entropy(model, config, target, completion, mask)[0]


def _token_logp_entropy(model, config, target, completion, mask):
    """``(L,)`` token log-probabilities and ``(L,)`` entropies of ``π(·|s, y_{<t})``."""
    logits = model(_prompt_token(config, target), completion)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.clip(completion, 0, config.digits)
    lp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.where(mask > 0, lp, 0.0), jnp.where(mask > 0, ent, 0.0)


def sample_completion(
    model: TransformerPolicy,
    config: SeqConfig,
    target: jax.Array,
    key: jax.Array,
    greedy=False,
    logit_offset: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One completion ``(L,)`` int and its mask ``(L,)`` float (1 up to and including EOS).

    ``logit_offset`` ``(L, D + 1)`` is added to the logits of each position: a rollout engine
    whose policy ``μ`` differs from the model's (see :func:`rollout_completion`).
    """
    comp, valid, _ = _sample(model, config, target, key, greedy, logit_offset)
    return comp, valid


def rollout_completion(
    model: TransformerPolicy,
    config: SeqConfig,
    target: jax.Array,
    key: jax.Array,
    logit_offset: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A rollout engine's completion: sampled from ``softmax(logits + logit_offset)``.

    Returns the completion ``(L,)``, its mask ``(L,)`` and the engine's own token log-probs
    ``(L,)`` (0 on padding), as a vLLM-style engine reports them.
    """
    return _sample(model, config, target, key, False, logit_offset)


def _sample(model, config, target, key, greedy, logit_offset):
    c = config
    prompt = _prompt_token(c, target)

    def body(carry, xs):
        comp, done = carry
        t, k = xs
        logits = model(prompt, comp)[t]
        if logit_offset is not None:
            logits = logits + logit_offset[t]
        tok = jnp.argmax(logits) if greedy else jax.random.categorical(k, logits)
        lp = jax.nn.log_softmax(logits)[tok]
        tok = jnp.where(done, _pad(c), tok).astype(comp.dtype)
        comp = comp.at[t].set(tok)
        return (comp, done | (tok == _eos(c))), (~done, jnp.where(done, 0.0, lp))

    init = (jnp.full((c.max_len,), _pad(c), jnp.int32), jnp.zeros((), bool))
    xs = (jnp.arange(c.max_len), jax.random.split(key, c.max_len))
    (comp, _), (valid, lp) = jax.lax.scan(body, init, xs)
    return comp, valid.astype(jnp.float32), lp


def digit_sums(config: SeqConfig, completion: jax.Array, mask: jax.Array) -> jax.Array:
    """The sum of the digits before EOS (any leading shape)."""
    is_digit = (completion < config.digits) & (mask > 0)
    return jnp.sum(jnp.where(is_digit, completion, 0), axis=-1)


def rewards_for(config: SeqConfig, sums: jax.Array, targets: jax.Array) -> jax.Array:
    """The verifiable reward: 1 for an exact sum; ``"partial"`` gives credit for near misses."""
    miss = jnp.abs(sums - targets).astype(jnp.float32)
    if config.reward == "exact":
        return (miss == 0).astype(jnp.float32)
    return jnp.maximum(0.0, 1.0 - miss / max(config.digits - 1, 1))


def enumerate_completions(config: SeqConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every completion: ``(N, L)`` tokens (PAD after EOS) and ``(N, L)`` masks."""
    c = config
    toks, masks = [], []
    for n in range(c.max_len + 1):
        for digits in itertools.product(range(c.digits), repeat=n):
            if n < c.max_len:
                row = [*digits, _eos(c)] + [_pad(c)] * (c.max_len - n - 1)
                m = [1.0] * (n + 1) + [0.0] * (c.max_len - n - 1)
            else:
                row, m = list(digits), [1.0] * n
            toks.append(row)
            masks.append(m)
    return np.asarray(toks, np.int32), np.asarray(masks, np.float32)


def exact_evaluation(
    model: TransformerPolicy, ref_model: TransformerPolicy, config: SeqConfig
) -> dict[str, jax.Array]:
    """Exact success probability, greedy reward and ``KL(π‖π_ref)`` by enumeration.

    Averages over the uniform prompt distribution; ``worst_success`` is the smallest success
    probability of any target, ``mass`` the total probability (1 up to rounding).
    """
    c = config
    toks, masks = (jnp.asarray(a) for a in enumerate_completions(c))
    targets = jnp.arange(c.min_target, c.max_target + 1)
    sums = digit_sums(c, toks, masks)

    def per_target(s):
        lp = jax.vmap(lambda y, m: token_logp(model, c, s, y, m).sum())(toks, masks)
        lp_ref = jax.vmap(lambda y, m: token_logp(ref_model, c, s, y, m).sum())(toks, masks)
        p = jnp.exp(lp)
        r = rewards_for(c, sums, s)
        g, gm = sample_completion(model, c, s, jax.random.key(0), greedy=True)
        g_r = rewards_for(c, digit_sums(c, g, gm), s)
        return jnp.sum(p * r), jnp.sum(p * (lp - lp_ref)), g_r, jnp.sum(p)

    success, kl, greedy, mass = jax.lax.map(per_target, targets)
    return {
        "success": jnp.mean(success),
        "worst_success": jnp.min(success),
        "greedy": jnp.mean(greedy),
        "kl": jnp.mean(kl),
        "mass": jnp.mean(mass),
        "success_per_target": success,
        "mass_per_target": mass,
    }


# ---------------------------------------------------------------------------------------------
# Training: one step per seed, vmapped over seeds, scanned over a chunk of steps, jitted once.


def _advantages(c: SeqConfig, r_gk, greedy_r_g, base_state):
    from expectax.rl import losses
    from expectax.rl import sequence as seq

    adv = VARIANTS[c.variant][0]
    if adv == "reinforce":  # the baseline: a moving average of earlier batches' mean reward
        b, new_state = losses.moving_average_baseline(
            base_state, r_gk.reshape(-1, 1), decay=c.baseline_decay
        )
        return seq.advantages(adv, r_gk, baseline=b[0]), new_state
    return seq.advantages(adv, r_gk, greedy_rewards_g=greedy_r_g), base_state


def _policy_loss(c: SeqConfig, lp, old, lp_rollout, adv, mask, weights) -> jax.Array:
    """``c.loss`` on the batch: ``old`` the trainer's sampling-time log-probs (``None`` on the
    first update: ratio 1), ``weights`` the rollout correction (``None``: none); VESPO takes the
    rollout engine's log-probs as its behaviour policy."""
    from expectax.rl import sequence as seq

    if c.loss == "ppo":
        clip = None if old is None else c.clip_eps
        return seq.sequence_policy_loss(
            lp,
            adv,
            mask,
            old_logp_gkt=old,
            clip_eps=clip,
            loss_agg_mode=c.agg,
            rollout_is_weights_gkt=weights,
        )
    if c.loss == "vespo":
        behaviour = lp_rollout if lp_rollout is not None else old
        return seq.vespo_loss(lp, behaviour, adv, mask, loss_agg_mode=c.agg)
    if c.loss == "gmpo":  # its own per-sequence geometric mean: no aggregation mode
        return seq.gmpo_loss(lp, old, adv, mask, rollout_is_weights_gkt=weights)
    fn = {"gspo": seq.gspo_loss, "cispo": seq.cispo_loss, "sapo": seq.sapo_loss}[c.loss]
    return fn(lp, old, adv, mask, loss_agg_mode=c.agg, rollout_is_weights_gkt=weights)


def _make_step(c: SeqConfig, static: Any, optimizer: Any) -> Callable:
    from expectax.rl import sequence as seq

    g, k = c.groups, c.group_size
    kl_est = c.kl[:2]
    off_policy = c.rollout_mismatch > 0
    corrected = off_policy and c.correction != "none"
    # the trainer's log-probs at sampling time: the KL penalty in the reward, the ratios of the
    # later epochs and the correction weights need them before the loss
    need_old = (c.kl.endswith("-reward") and c.beta > 0) or c.epochs > 1 or corrected

    def logp_all(params, targets, comp, mask, entropy=False):
        model = eqx.combine(params, static)
        f = _token_logp_entropy if entropy else token_logp
        per = jax.vmap(lambda s, y, m: f(model, c, s, y, m), (None, 0, 0))
        return jax.vmap(per)(targets, comp, mask)  # (G, K, L)

    def step(carry, xs):
        params, opt_state, base_state, ref_params, engine_u = carry
        key, active = xs
        model = eqx.combine(params, static)
        k_t, k_s = jax.random.split(key)
        targets = jax.random.randint(k_t, (g,), c.min_target, c.max_target + 1)
        keys = jax.random.split(k_s, g * k).reshape(g, k)
        if off_policy:  # the rollout engine: logits + δ·u, its own log-probs reported
            one = jax.vmap(
                lambda s, kk: rollout_completion(
                    model, c, s, kk, c.rollout_mismatch * engine_u[s - c.min_target]
                ),
                (None, 0),
            )
            comp, mask, lp_rollout = jax.vmap(one)(targets, keys)  # (G, K, L)
        else:
            one = jax.vmap(lambda s, kk: sample_completion(model, c, s, kk), (None, 0))
            comp, mask = jax.vmap(one)(targets, keys)  # (G, K, L)
            lp_rollout = None
        r = rewards_for(c, digit_sums(c, comp, mask), targets[:, None])
        # the trainer's log-probs at sampling time (see need_old); otherwise the loss's own
        # forward pass (the first update is on-policy for the trainer: the same values) gives them
        reward_kl = c.kl.endswith("-reward") and c.beta > 0
        lp_old = jax.lax.stop_gradient(logp_all(params, targets, comp, mask)) if need_old else None
        weights = None
        if corrected:
            level, mode = c.correction.split("-")
            weights = seq.rollout_correction_weights(
                lp_old,
                lp_rollout,
                mask,
                importance_sampling_level=level,
                mode="truncate" if mode == "is" else mode,
                threshold=jnp.inf if mode == "is" else c.correction_threshold,
            )
        lp_ref = jax.lax.stop_gradient(logp_all(ref_params, targets, comp, mask))
        r_used = r
        greedy_r = None
        if reward_kl:
            r_used = seq.kl_penalized_rewards(r, lp_old, lp_ref, mask, c.beta, estimator=kl_est)
        if VARIANTS[c.variant][0] == "remax":
            gc, gm = jax.vmap(lambda s: sample_completion(model, c, s, key, greedy=True))(targets)
            greedy_r = rewards_for(c, digit_sums(c, gc, gm), targets)
            if reward_kl:
                glp = logp_all(params, targets, gc[:, None], gm[:, None])
                glp_ref = logp_all(ref_params, targets, gc[:, None], gm[:, None])
                greedy_r = seq.kl_penalized_rewards(
                    greedy_r[:, None], glp, glp_ref, gm[:, None], c.beta, estimator=kl_est
                )[:, 0]
        adv, new_base = _advantages(c, r_used, greedy_r, base_state)

        def loss_fn(p, old):
            if c.entropy > 0:
                lp, ent = logp_all(p, targets, comp, mask, entropy=True)
            else:
                lp = logp_all(p, targets, comp, mask)
            loss = _policy_loss(c, lp, old, lp_rollout, adv, mask, weights)
            if c.entropy > 0:
                loss = loss - c.entropy * seq.aggregate_loss(ent, mask, loss_agg_mode=c.agg)
            if c.kl.endswith("-loss") and c.beta > 0:
                loss = loss + c.beta * seq.kl_loss(
                    lp, lp_ref, mask, estimator=kl_est, loss_agg_mode=c.agg
                )
            return loss, jax.lax.stop_gradient(lp)

        def update(state, epoch):
            p, o = state
            # the first update on the batch is on-policy for the trainer (old = None: ratio 1)
            old = None if c.epochs == 1 else lp_old
            grads, lp_cur = jax.grad(loss_fn, has_aux=True)(p, old)
            updates, o = optimizer.update(grads, o, p)
            return (eqx.apply_updates(p, updates), o), lp_cur

        if c.epochs == 1:
            (new_params, new_opt), lp_cur = update((params, opt_state), 0)
        else:
            (new_params, new_opt), _ = jax.lax.scan(
                update, (params, opt_state), jnp.arange(c.epochs)
            )
            lp_cur = lp_old
        lp_old = lp_cur if lp_old is None else lp_old
        keep = lambda new, old: jax.tree_util.tree_map(
            lambda a, b: jnp.where(active, a, b), new, old
        )
        carry = (
            keep(new_params, params),
            keep(new_opt, opt_state),
            keep(new_base, base_state),
            ref_params,
            engine_u,
        )
        metrics = {
            "reward": jnp.mean(r),
            "success": jnp.mean(
                (digit_sums(c, comp, mask) == targets[:, None]).astype(jnp.float32)
            ),
            "kl_k1": jnp.mean(jnp.sum((lp_old - lp_ref) * mask, axis=-1)),
            "length": jnp.mean(jnp.sum(mask, axis=-1)),
            # k1 estimate of KL(μ‖π) between the rollout engine and the trainer (0: on-policy)
            "rollout_kl": (
                jnp.mean(jnp.sum((lp_rollout - lp_old) * mask, axis=-1))
                if off_policy
                else jnp.zeros(())
            ),
            "tokens": jnp.sum(mask) * active,
        }
        return carry, metrics

    return step


def train(
    config: SeqConfig,
    seeds: Sequence[int],
    progress: Callable[[int], None] | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``config`` once per seed, all seeds in one vmapped, jitted computation.

    Returns a dict with per-step ``curves`` (arrays ``(seeds, steps)``: batch ``reward``,
    ``success``, the k1 estimate ``kl_k1`` of ``KL(π‖π_ref)`` on the batch, ``length``),
    ``evals`` (step, then arrays ``(seeds,)`` of the exact evaluation), ``final`` (the last
    exact evaluation), ``tokens_per_s`` (completion tokens, EOS included, sampled per second of
    training over all seeds, compilation excluded), ``compile_s`` and ``train_s``.
    ``progress(steps_done)`` is called after each chunk. ``compiler_options`` go to XLA's
    compiler for the training and evaluation programs (e.g.
    ``{"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}``
    compiles about three times as fast and runs slower: the tests use it).
    """
    import optax

    c = config.validate()
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: give at least one seed.")
    base_keys = jnp.stack([jax.random.key(int(s)) for s in seeds])
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(base_keys)
    train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(base_keys)
    # one model per seed, stacked: eager initialisation compiles each random op once and then
    # reuses it, which is several times cheaper than vmapping (or jitting) the initialiser
    models = [TransformerPolicy(c, init_keys[j]) for j in range(len(seeds))]
    static = eqx.partition(models[0], eqx.is_array)[1]
    params = jax.tree_util.tree_map(
        lambda *a: jnp.stack(a), *(eqx.filter(m, eqx.is_array) for m in models)
    )
    # the schedule counts optimiser updates: epochs per step
    warmup, total = c.warmup * c.epochs, c.steps * c.epochs
    if c.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, warmup, total)
    elif c.warmup:
        lr = optax.linear_schedule(0.0, c.learning_rate, warmup)
    else:
        lr = c.learning_rate
    optimizer = optax.adam(lr)
    from expectax.rl import losses

    opt_state = jax.vmap(optimizer.init)(params)
    base_state = jax.vmap(lambda _: losses.moving_average_init(1))(jnp.arange(len(seeds)))
    step = _make_step(c, static, optimizer)
    chunk = min(c.eval_every, c.steps)
    n_chunks = -(-c.steps // chunk)

    def run_chunk(carry, keys, active):
        # carry leaves have a leading seed axis; keys (seeds, chunk); active (chunk,)
        return jax.vmap(lambda cr, ks: jax.lax.scan(step, cr, (ks, active)))(carry, keys)

    def evaluate(params, ref_params):
        def one(p, rp):
            return exact_evaluation(eqx.combine(p, static), eqx.combine(rp, static), c)

        return jax.vmap(one)(params, ref_params)

    # the rollout engine's logit error: a fixed standard-normal table per seed (prompt ×
    # position × token), scaled by rollout_mismatch in the step
    engine_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(base_keys)
    engine_u = jax.vmap(lambda k: jax.random.normal(k, (c.num_targets, c.max_len, c.digits + 1)))(
        engine_keys
    )
    carry = (params, opt_state, base_state, params, engine_u)
    t0 = time.perf_counter()
    chunk_keys = lambda i: jax.vmap(
        lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(chunk) + i * chunk)
    )(train_keys)
    active0 = jnp.arange(chunk) < c.steps
    opts = compiler_options
    run_c = jax.jit(run_chunk).lower(carry, chunk_keys(0), active0).compile(opts)
    eval_c = jax.jit(evaluate).lower(params, params).compile(opts)
    compile_s = time.perf_counter() - t0

    evals = [dict(step=0, **jax.device_get(eval_c(params, params)))]
    metrics, train_s = [], 0.0
    for i in range(n_chunks):
        keys = chunk_keys(i)
        active = (jnp.arange(chunk) + i * chunk) < c.steps
        t1 = time.perf_counter()
        carry, m = run_c(carry, keys, active)
        jax.block_until_ready(carry)
        train_s += time.perf_counter() - t1
        metrics.append(jax.device_get(m))
        done = min((i + 1) * chunk, c.steps)
        evals.append(dict(step=done, **jax.device_get(eval_c(carry[0], params))))
        if progress is not None:
            progress(done)
    curves = {
        name: np.concatenate([m[name] for m in metrics], axis=1)[:, : c.steps]
        for name in metrics[0]
    }
    tokens = float(np.sum(curves.pop("tokens")))
    final = evals[-1]
    reached_at = []
    for j in range(len(seeds)):
        hits = [e["step"] for e in evals if e["success"][j] >= c.threshold]
        reached_at.append(hits[0] if hits else None)
    return {
        "config": dataclasses.asdict(c) | {"loss_agg_mode": c.agg},
        "seeds": seeds,
        "curves": curves,
        "evals": evals,
        "final": {k: np.asarray(v) for k, v in final.items() if k != "step"},
        "reached": [bool(s >= c.threshold) for s in np.asarray(final["success"])],
        "first_step_reached": reached_at,
        "tokens": tokens,
        "tokens_per_s": tokens / train_s if train_s > 0 else math.nan,
        "compile_s": compile_s,
        "train_s": train_s,
    }
