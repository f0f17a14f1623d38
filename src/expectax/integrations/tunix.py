"""expectax's advantage estimators and policy losses in tunix's registry.

tunix (``google-tunix``) selects its advantage estimator and policy loss by name
(``GRPOConfig(advantage_estimator=..., policy_loss_fn=...)``) from
``tunix.rl.function_registry``. One call puts expectax's there::

    import expectax.integrations.tunix as ex_tunix
    from tunix.rl.grpo import grpo_learner

    ex_tunix.register()  # names prefixed "expectax_"
    config = grpo_learner.GRPOConfig(
        num_generations=4,
        advantage_estimator="expectax_rloo",
        policy_loss_fn="expectax_cispo",
    )

Conventions adapted:

- **Advantages.** tunix calls ``estimator(rewards=..., num_generations=K)`` with the rewards
  flat, ``(G·K,)``, the ``K`` completions of a prompt next to each other (the learner repeats
  each prompt ``K`` times in a row), and expects ``(G·K,)`` back. The adapter reshapes to
  expectax's ``(G, K)``, calls :func:`expectax.rl.sequence.advantages` (or
  :func:`~expectax.rl.sequence.gdpo_advantages`), and flattens. NumPy in, NumPy out.
- **Policy losses.** tunix calls ``loss_fn(model, train_example, algo_config, pad_id, eos_id)``
  and expects ``(loss, aux)``. The adapter computes the per-token log-probabilities with
  tunix's own ``common.compute_per_token_logps`` (``(N, T)``, ``N = G·K``), views them as
  ``(1, N, T)`` (the aggregation modes average over all ``G·K`` sequences alike, so the group
  split does not matter here), and calls the expectax loss with the completion mask, the old
  log-probs (``None`` when ``num_iterations == 1``: the ratio is 1 with the right gradient), the
  ``(N,)`` advantages and tunix's ``sampler_is_weights`` (TIS) as ``rollout_is_weights_gkt``.
  ``algo_config.loss_agg_mode`` is translated (:data:`LOSS_AGG_MODES`); with ``beta ≠ 0`` the
  KL term is :func:`expectax.rl.sequence.kl_loss` with tunix's ``kl_loss_mode`` translated
  (``"kl"`` → k1, ``"mse_kl"`` → k2, ``"low_var_kl"`` → k3).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import numpy as np

from expectax.rl import sequence as seq

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_LOSS_MODES",
    "LOSS_AGG_MODES",
    "NOT_REGISTERED",
    "POLICY_LOSSES",
    "register",
]

_EXTRA_HINT = 'expectax.integrations.tunix needs tunix: pip install "expectax[tunix]"'

#: The advantage estimators registered (expectax's names; tunix's name is prefix + name).
ADVANTAGE_ESTIMATORS = (
    "reinforce",
    "rloo",
    "grpo",
    "dr-grpo",
    "reinforce++",
    "reinforce++-baseline",
    "james-stein",
    "gdpo",
)

#: The policy losses registered, each an expectax function of per-token log-probs.
POLICY_LOSSES: dict[str, Callable] = {
    "sequence_policy": seq.sequence_policy_loss,
    "gspo": seq.gspo_loss,
    "cispo": seq.cispo_loss,
    "sapo": seq.sapo_loss,
    "gmpo": seq.gmpo_loss,
    "vespo": seq.vespo_loss,
}

#: expectax estimators that are not registered, and why.
NOT_REGISTERED = {
    "remax": "needs each prompt's greedy-completion reward; tunix calls an advantage estimator "
    "with the rewards and num_generations only",
    "opo": "needs the completion lengths; tunix calls an advantage estimator with the rewards "
    "and num_generations only",
}

#: tunix's ``loss_agg_mode`` → expectax's (equal at tunix's default normalisers).
LOSS_AGG_MODES = {
    "token-mean": "token-mean",
    "sequence-mean-token-mean": "seq-mean-token-mean",
    "seq-mean-token-sum": "seq-mean-token-sum",
    # tunix: Σ_{i,t} m ℓ / (number of sequences) by default
    "sequence-mean-token-sum-norm": "seq-mean-token-sum",
    # tunix: (1/N) Σ_i Σ_t m ℓ / T by default (T the padded completion length)
    "sequence-mean-token-scale": "seq-mean-token-sum-norm",
    # expectax's own names pass through
    "seq-mean-token-mean": "seq-mean-token-mean",
    "seq-mean-token-sum-norm": "seq-mean-token-sum-norm",
}

#: tunix's ``kl_loss_mode`` → expectax's KL estimator.
KL_LOSS_MODES = {"kl": "k1", "mse_kl": "k2", "low_var_kl": "k3"}


def _function_registry():
    try:
        from tunix.rl import function_registry
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(_EXTRA_HINT) from e
    return function_registry


# --------------------------------------------------------------------------------------------
# Advantages: tunix's flat (G·K,) rewards ↔ expectax's (G, K).


def _grouped(fn: str, rewards, num_generations, trailing: tuple[int, ...] = ()):
    if isinstance(num_generations, bool) or not isinstance(num_generations, (int, np.integer)):
        raise TypeError(f"{fn}: num_generations must be an int, got {num_generations!r}.")
    if num_generations < 1:
        raise ValueError(f"{fn}: num_generations must be ≥ 1, got {num_generations}.")
    r = rewards if hasattr(rewards, "reshape") and hasattr(rewards, "ndim") else None
    if r is None:
        r = np.asarray(rewards, dtype=np.float32)
    if r.ndim not in (1, 1 + len(trailing)) or r.shape[0] % num_generations:
        raise ValueError(
            f"{fn}: rewards has shape {tuple(r.shape)}; expected tunix's flat layout (G·K,"
            f"{'' if not trailing else ' R'}) with the K = num_generations = {num_generations} "
            "completions of each prompt next to each other, so its length must be a multiple "
            "of num_generations."
        )
    return r.reshape((-1, num_generations) + tuple(r.shape[1:]))


def _advantage_estimator(name: str, tunix_name: str) -> Callable:
    fn = f"tunix advantage estimator {tunix_name!r}"

    def estimator(rewards, num_generations: int, **unused):
        if name == "gdpo":
            r = _grouped(fn, rewards, num_generations, trailing=(1,))
            if r.ndim == 2:  # one reward column: tunix's reward manager sums the reward fns
                r = r[..., None]
            adv = seq.gdpo_advantages(r)
        else:
            adv = seq.advantages(name, _grouped(fn, rewards, num_generations))
        return adv.reshape(-1)

    estimator.__name__ = tunix_name.replace("-", "_").replace("+", "p")
    estimator.__qualname__ = estimator.__name__
    estimator.__doc__ = (
        f"expectax's {name!r} advantages for tunix: (G·K,) rewards, K = num_generations, "
        "→ (G·K,) advantages."
    )
    return estimator


# --------------------------------------------------------------------------------------------
# Policy losses: tunix's (model, train_example, algo_config, pad_id, eos_id) → (loss, aux).


def _policy_loss(name: str, tunix_name: str, options: Mapping) -> Callable:
    loss = POLICY_LOSSES[name]
    params = inspect.signature(loss).parameters
    fn = f"tunix policy loss {tunix_name!r}"
    unknown = set(options) - set(params) - {"loss_agg_mode"}
    if unknown:
        raise TypeError(
            f"register: loss_options[{name!r}] has {sorted(unknown)}, which "
            f"{loss.__name__} does not take; it takes {', '.join(list(params)[4:])}."
        )

    def policy_loss_fn(model, train_example, algo_config, pad_id, eos_id, **unused):
        import jax.numpy as jnp
        from flax import nnx
        from tunix.rl import common

        if getattr(train_example, "segment_ids", None) is not None:
            raise NotImplementedError(
                f"{fn}: sequence packing (segment_ids) is not supported; the expectax losses "
                "need one completion per row. Turn packing off, or use tunix's 'grpo' loss."
            )
        mode = options.get("loss_agg_mode", getattr(algo_config, "loss_agg_mode", None))
        if mode is not None and mode not in LOSS_AGG_MODES:
            raise ValueError(
                f"{fn}: loss_agg_mode {mode!r} has no expectax counterpart; use one of "
                f"{', '.join(LOSS_AGG_MODES)}."
            )
        kwargs = dict(options)
        kwargs.pop("loss_agg_mode", None)
        if "loss_agg_mode" in params and mode is not None:
            kwargs["loss_agg_mode"] = LOSS_AGG_MODES[mode]
        if name == "sequence_policy":
            if getattr(algo_config, "epsilon_c", None) is not None:
                raise ValueError(
                    f"{fn}: dual clipping (epsilon_c) is not in expectax's "
                    "sequence_policy_loss; set epsilon_c=None or use tunix's 'grpo' loss."
                )
            eps = getattr(algo_config, "epsilon", None)
            kwargs.setdefault("clip_eps", eps)
            kwargs.setdefault("clip_eps_high", getattr(algo_config, "epsilon_high", eps))

        graphdef, state = nnx.split(model)
        logp = common.compute_per_token_logps(
            graphdef,
            state,
            prompt_tokens=train_example.prompt_ids,
            completion_tokens=train_example.completion_ids,
            pad_id=pad_id,
            eos_id=eos_id,
            stop_gradient=False,
            temperature=getattr(algo_config, "temperature", 1.0),
        ).astype(jnp.float32)
        n, t = logp.shape
        mask = train_example.completion_mask.astype(jnp.float32).reshape(1, n, t)
        adv = jnp.asarray(train_example.advantages, jnp.float32)
        adv = adv.reshape((1,) + adv.shape)  # (1, N) per completion or (1, N, T) per token
        old = train_example.old_per_token_logps
        old = None if old is None else jnp.asarray(old, jnp.float32).reshape(1, n, t)
        tis = getattr(train_example, "sampler_is_weights", None)
        tis = None if tis is None else jnp.asarray(tis, jnp.float32).reshape(1, n, t)
        lp = logp.reshape(1, n, t)
        pg = loss(
            logp_gkt=lp,
            old_logp_gkt=old,
            advantages=adv,
            mask_gkt=mask,
            rollout_is_weights_gkt=tis,
            **kwargs,
        )
        total = pg
        aux = {"pg_loss": pg, "pg_clipfrac": jnp.float32(jnp.nan), "kl": jnp.float32(0.0)}
        aux["kl_loss"] = jnp.float32(0.0)
        ref = train_example.ref_per_token_logps
        if ref is not None:
            kl_mode = getattr(algo_config, "kl_loss_mode", "kl")
            if kl_mode not in KL_LOSS_MODES:
                raise ValueError(
                    f"{fn}: kl_loss_mode {kl_mode!r} has no expectax counterpart; use one of "
                    f"{', '.join(KL_LOSS_MODES)}."
                )
            if getattr(algo_config, "kl_clamp_value", None) is not None:
                raise ValueError(
                    f"{fn}: kl_clamp_value is not supported by expectax's kl_loss (a clamped "
                    "estimator is a different, biased one); set it to None."
                )
            ref = jnp.asarray(ref, jnp.float32).reshape(1, n, t)
            estimator = KL_LOSS_MODES[kl_mode]
            kl_t = seq.kl_estimate(lp, ref, mask, estimator=estimator)
            aux["kl"] = jnp.sum(kl_t * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            kl_agg = LOSS_AGG_MODES[mode] if mode is not None else "seq-mean-token-mean"
            kl = seq.kl_loss(lp, ref, mask, estimator=estimator, loss_agg_mode=kl_agg)
            aux["kl_loss"] = kl
            beta = getattr(algo_config, "beta", 0.0)
            if beta is not None and beta != 0.0:
                total = total + beta * kl
        return total, aux

    policy_loss_fn.__name__ = tunix_name
    policy_loss_fn.__qualname__ = tunix_name
    policy_loss_fn.__doc__ = f"expectax's {loss.__name__} as a tunix policy loss."
    return policy_loss_fn


# --------------------------------------------------------------------------------------------


def register(
    prefix: str = "expectax_",
    *,
    advantage_estimators=ADVANTAGE_ESTIMATORS,
    policy_losses=tuple(POLICY_LOSSES),
    loss_options: Mapping[str, Mapping] | None = None,
) -> dict[str, list[str]]:
    """Register expectax's advantage estimators and policy losses in tunix's registry.

    Args:
      prefix: put before every expectax name (``"expectax_rloo"``, ``"expectax_cispo"``).
      advantage_estimators: which of :data:`ADVANTAGE_ESTIMATORS` to register (all by default).
      policy_losses: which of :data:`POLICY_LOSSES` to register (all by default).
      loss_options: per loss, keyword arguments of the expectax function, e.g.
        ``{"cispo": {"epsilon_high": 0.3}, "gspo": {"epsilon_low": 3e-4}}``; a
        ``"loss_agg_mode"`` here wins over ``algo_config.loss_agg_mode``. Without them each loss
        uses expectax's defaults (the paper's), except ``"sequence_policy"``, which clips with
        tunix's ``algo_config.epsilon`` / ``epsilon_high``.

    Returns:
      ``{"advantage_estimator": [names], "policy_loss_fn": [names]}``, the tunix names.

    Raises:
      ImportError: tunix is not installed (``pip install "expectax[tunix]"``).
    """
    if not isinstance(prefix, str):
        raise TypeError(f"register: prefix must be a str, got {prefix!r}.")
    loss_options = dict(loss_options or {})
    for group, known, extra in (
        ("advantage_estimators", ADVANTAGE_ESTIMATORS, NOT_REGISTERED),
        ("policy_losses", tuple(POLICY_LOSSES), {}),
    ):
        names = advantage_estimators if group == "advantage_estimators" else policy_losses
        if isinstance(names, str):
            raise TypeError(f"register: {group} must be a sequence of names, got {names!r}.")
        for name in names:
            if name not in known:
                why = f" ({extra[name]})" if name in extra else ""
                raise ValueError(
                    f"register: {group} has unknown name {name!r}{why}; one of {', '.join(known)}."
                )
    bad = set(loss_options) - set(policy_losses)
    if bad:
        raise ValueError(
            f"register: loss_options names {sorted(bad)}, which are not registered; one of "
            f"{', '.join(policy_losses)}."
        )
    registry = _function_registry()
    done: dict[str, list[str]] = {"advantage_estimator": [], "policy_loss_fn": []}
    for name in advantage_estimators:
        tunix_name = prefix + name
        registry.register_advantage_estimator(tunix_name)(_advantage_estimator(name, tunix_name))
        done["advantage_estimator"].append(tunix_name)
    for name in policy_losses:
        tunix_name = prefix + name
        fn = _policy_loss(name, tunix_name, loss_options.get(name, {}))
        registry.register_policy_loss_fn(tunix_name)(fn)
        done["policy_loss_fn"].append(tunix_name)
    return done
