r"""Log-probabilities and policy-gradient losses chunked over the vocabulary.

At language-model scale the memory of a policy-gradient step is the logits: one float32
``[B, S, V]`` tensor is 112 GB at ``S = 32768``, ``V = 151936``. The functions here go from the
last hidden states ``h_bsd`` ``[B, S, d]`` and the unembedding ``w_dv`` ``[d, V]`` (optional bias
``bias_v``) straight to the log-probabilities of the sampled tokens,

.. math::

    \log \pi(y_{bs} \mid \cdot) = z_{b s y_{bs}} - \log \sum_{v} e^{z_{bsv}}, \qquad
    z_{bsv} = h_{bs} \cdot w_{:,v} + \text{bias}_v ,

and to any policy-gradient loss of :mod:`expectax.rl.sequence` on them, and their gradients with
respect to ``h``, ``w`` and the bias, **without ever holding** ``[B, S, V]``: the ``B·S`` tokens are
cut into chunks of ``token_chunk`` and the vocabulary into chunks of ``vocab_chunk``; only one
``[token_chunk, vocab_chunk]`` block of logits exists at a time.

- Forward: for each token chunk, an online log-sum-exp over the vocabulary chunks (a running
  maximum ``m`` and sum ``s``, rescaled by ``exp(m_old − m_new)`` when the maximum grows, as in
  Milakov & Gimelshein 2018 and flash attention); the target logit is ``h · w[:, y]`` gathered
  directly. Saved for the backward pass: the inputs and one ``lse`` per token (``[B·S]``).
- Backward: the loss only enters through ``g = ∂L/∂ log π`` (``[B, S]``, cheap, from ordinary
  autodiff of ``loss_fn``), and ``∂ log π_n / ∂ z_{nv} = 1[v = y_n] − softmax(z_n)_v``; each
  block's softmax is recomputed from its logits and the saved ``lse``, and ``dh``, ``dw`` and
  the bias gradient are accumulated block by block in float32.

This is a ``jax.custom_vjp`` (DESIGN.md asks to say why): reverse mode through a ``lax.scan``
keeps every iteration's residuals, and differentiating the online log-sum-exp itself would
carry the gradient back through every rescaling of the running sum. With ``jax.checkpoint`` on
the chunk bodies the memory would be bounded, but the backward pass would replay the whole
online recursion (twice the forward matmuls) to reach each block's softmax; the closed form
``g·(onehot − softmax)`` from the saved ``lse`` needs one recomputed matmul per block. What it
breaks: **forward mode** (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) and second reverse-mode
derivatives raise; use :func:`dense_log_probs` (the materialised reference, plain autodiff) where
they are needed and the logits fit. ``jax.jit``, ``jax.vmap`` and ``jax.grad`` work.

Numerics: matmuls take their operands in the inputs' dtype (``jnp.result_type(h, w)``: bfloat16
stays bfloat16) with float32 accumulation (``preferred_element_type``); the log-sum-exp,
softmax and all gradient accumulators are float32; log-probs come back as float32, ``dh``,
``dw``, ``dbias`` in the dtype of ``h``, ``w``, ``bias``. When ``V`` (or ``B·S``) is not a
multiple of the chunk, the last chunk is taken flush with the end (``lax.dynamic_slice``'s
clamped start) and the columns (rows) it shares with the previous chunk get ``−inf`` logits
(zero cotangent), so nothing is counted twice and nothing is copied or padded.

Shapes follow rlax-style suffixes: ``_bsd`` ``[B, S, d]``, ``_dv`` ``[d, V]``, ``_bs`` ``[B, S]``,
``_v`` ``[V]``. The sequence losses of :mod:`expectax.rl.sequence` name completions ``(G, K, T)``;
the ready wrappers here see the ``B`` rows as one group (``(1, B, S)``), which changes nothing for
the losses (every aggregation mode averages over sequences) — compute advantages per group
first with the ``*_advantages`` functions and pass them flattened, ``adv_gk.reshape(-1)``.

References:
  Milakov & Gimelshein (2018), "Online normalizer calculation for softmax", arXiv:1805.02867.
  Wijmans et al. (2025), "Cut your losses in large-vocabulary language models" (cut
  cross-entropy), arXiv:2411.09009. Hsu et al. (2024), "Liger kernel: efficient Triton kernels
  for LLM training" (fused linear cross entropy), arXiv:2410.10989.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from expectax.rl.sequence import LossAggMode, kl_loss, sequence_policy_loss

__all__ = [
    "chunked_kl_loss",
    "chunked_log_probs",
    "chunked_policy_loss",
    "chunked_sequence_policy_loss",
    "dense_log_probs",
]

DEFAULT_VOCAB_CHUNK = 4096
DEFAULT_TOKEN_CHUNK = 1024


# --------------------------------------------------------------------------------------------
# Argument checks (trace time; value checks only on concrete arrays).


def _array(name: str, x, fn: str, rank: int, what: str, kind: str) -> jax.Array:
    if x is None:
        raise TypeError(f"{fn}: {name} is required, got None.")
    arr = jnp.asarray(x)
    if arr.ndim != rank:
        raise ValueError(f"{fn}: {name} must have rank {rank} ({what}), got shape {arr.shape}.")
    if kind == "float" and not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must be a floating-point array (float32 or bfloat16), got dtype "
            f"{arr.dtype}."
        )
    if kind == "int" and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(
            f"{fn}: {name} must hold integer token ids, got dtype {arr.dtype}. Pass the sampled "
            "token ids (e.g. tokens.astype(jnp.int32)), not one-hot vectors or log-probs."
        )
    return arr


def _chunk(name: str, value, fn: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"{fn}: {name} must be a Python int (a static chunk size), got {value!r} of type "
            f"{type(value).__name__}."
        )
    if value < 1:
        raise ValueError(f"{fn}: {name} must be ≥ 1, got {value}.")
    return int(value)


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_inputs(h_bsd, w_dv, tokens_bs, mask_bs, bias_v, vocab_chunk, token_chunk, fn):
    h = _array("h_bsd", h_bsd, fn, 3, "hidden states [B, S, d]", "float")
    w = _array("w_dv", w_dv, fn, 2, "the unembedding [d, V]", "float")
    if w.shape[0] != h.shape[2]:
        hint = (
            " It looks like a [V, d] embedding table: pass its transpose, w.T."
            if w.shape[1] == h.shape[2]
            else ""
        )
        raise ValueError(
            f"{fn}: w_dv has shape {w.shape} but h_bsd has d = {h.shape[2]} (its last axis); "
            f"w_dv must be [d, V] = [{h.shape[2]}, V].{hint}"
        )
    if w.shape[1] == 0 or h.shape[0] * h.shape[1] == 0:
        raise ValueError(
            f"{fn}: empty input: h_bsd has shape {h.shape}, w_dv {w.shape}; need B·S ≥ 1 and V ≥ 1."
        )
    tok = _array("tokens_bs", tokens_bs, fn, 2, "token ids [B, S]", "int")
    if tok.shape != h.shape[:2]:
        raise ValueError(
            f"{fn}: tokens_bs has shape {tok.shape} but h_bsd has [B, S] = {h.shape[:2]}; pass "
            "the token each hidden state predicts (shifted by one if h includes the prompt)."
        )
    mask = None
    if mask_bs is not None:
        mask = _array("mask_bs", mask_bs, fn, 2, "token mask [B, S]", "any")
        if mask.shape != tok.shape:
            raise ValueError(
                f"{fn}: mask_bs has shape {mask.shape} but tokens_bs has shape {tok.shape}; they "
                "must be equal."
            )
        if _concrete(mask):
            arr = np.asarray(mask, dtype=np.float64)
            bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
            if np.any(bad):
                where = tuple(np.argwhere(bad)[0].tolist())
                raise ValueError(
                    f"{fn}: mask_bs must hold 1 for tokens and 0 for padding (or weights in "
                    f"[0, 1]), got {arr[where]!r} at index {where}."
                )
    bias = None
    if bias_v is not None:
        bias = _array("bias_v", bias_v, fn, 1, "one bias per vocabulary entry [V]", "float")
        if bias.shape != (w.shape[1],):
            raise ValueError(
                f"{fn}: bias_v has shape {bias.shape} but w_dv has V = {w.shape[1]}; pass one "
                "bias per vocabulary entry, shape (V,)."
            )
    vc = _chunk("vocab_chunk", vocab_chunk, fn)
    tc = _chunk("token_chunk", token_chunk, fn)
    if _concrete(tok):
        t = np.asarray(tok)
        live = np.asarray(mask) != 0 if mask is not None and _concrete(mask) else True
        bad = live & ((t < 0) | (t >= w.shape[1]))
        if np.any(bad):
            where = tuple(np.argwhere(bad)[0].tolist())
            raise ValueError(
                f"{fn}: tokens_bs has id {int(t[where])} at index {where}, outside the vocabulary "
                f"[0, {w.shape[1]}). Mask padding positions with mask_bs = 0 (their ids are "
                "then ignored)."
            )
    return h, w, tok, mask, bias, vc, tc


# --------------------------------------------------------------------------------------------
# The chunked core: flat [N, d] hidden states, custom VJP.


def _block_logits(h_c, w, bias, vs, vc, cdt):
    """Logits of one block: [tc, vc] in float32, from the vocabulary slice starting at vs."""
    w_c = jax.lax.dynamic_slice_in_dim(w, vs, vc, axis=1).astype(cdt)
    z = jnp.dot(h_c, w_c, preferred_element_type=jnp.float32)
    if bias is not None:
        z = z + jax.lax.dynamic_slice_in_dim(bias, vs, vc).astype(jnp.float32)[None, :]
    return z, w_c


def _starts(i, chunk, total):
    """Intended start ``i·chunk`` and the actual, clamped one (the last chunk ends at total)."""
    want = i * chunk
    return want, jnp.minimum(want, total - chunk)


def _forward(vc, tc, h, w, bias, tok, valid):
    n, _ = h.shape
    v = w.shape[1]
    cdt = jnp.result_type(h.dtype, w.dtype)
    n_tok = -(-n // tc)
    n_voc = -(-v // vc)
    col = jnp.arange(vc)

    def token_body(i, out):
        logp_out, lse_out = out
        _, ts = _starts(i, tc, n)
        h_c = jax.lax.dynamic_slice_in_dim(h, ts, tc).astype(cdt)
        tok_c = jax.lax.dynamic_slice_in_dim(tok, ts, tc)

        def vocab_body(j, carry):
            m, s = carry
            want, vs = _starts(j, vc, v)
            z, _ = _block_logits(h_c, w, bias, vs, vc, cdt)
            z = jnp.where((vs + col >= want)[None, :], z, -jnp.inf)  # shared with chunk j-1
            m_new = jnp.maximum(m, jnp.max(z, axis=1))
            s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=1)
            return m_new, s

        init = (jnp.full((tc,), -jnp.inf, jnp.float32), jnp.zeros((tc,), jnp.float32))
        m, s = jax.lax.fori_loop(0, n_voc, vocab_body, init)
        lse = m + jnp.log(s)
        in_range = (tok_c >= 0) & (tok_c < v)
        tok_safe = jnp.clip(tok_c, 0, v - 1)
        w_y = jnp.take(w, tok_safe, axis=1).astype(cdt)  # [d, tc]
        z_y = jnp.einsum("td,dt->t", h_c, w_y, preferred_element_type=jnp.float32)
        if bias is not None:
            z_y = z_y + bias[tok_safe].astype(jnp.float32)
        valid_c = jax.lax.dynamic_slice_in_dim(valid, ts, tc)
        logp = jnp.where(in_range, z_y - lse, jnp.nan)
        logp = jnp.where(valid_c, logp, 0.0)
        # rows shared with the previous chunk are recomputed identically: overwriting is exact
        logp_out = jax.lax.dynamic_update_slice_in_dim(logp_out, logp, ts, 0)
        lse_out = jax.lax.dynamic_update_slice_in_dim(lse_out, lse, ts, 0)
        return logp_out, lse_out

    init = (jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))
    return jax.lax.fori_loop(0, n_tok, token_body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _log_probs_flat(vc, tc, h, w, bias, tok, valid):
    return _forward(vc, tc, h, w, bias, tok, valid)[0]


def _log_probs_fwd(vc, tc, h, w, bias, tok, valid):
    logp, lse = _forward(vc, tc, h, w, bias, tok, valid)
    return logp, (h, w, bias, tok, valid, lse)


def _log_probs_bwd(vc, tc, res, g):
    h, w, bias, tok, valid, lse = res
    n, d = h.shape
    v = w.shape[1]
    cdt = jnp.result_type(h.dtype, w.dtype)
    n_tok = -(-n // tc)
    n_voc = -(-v // vc)
    col = jnp.arange(vc)
    row = jnp.arange(tc)
    g = jnp.where(valid, g.astype(jnp.float32), 0.0)

    def token_body(i, acc):
        dh, dw, db = acc
        want_t, ts = _starts(i, tc, n)
        h_c = jax.lax.dynamic_slice_in_dim(h, ts, tc).astype(cdt)
        tok_c = jax.lax.dynamic_slice_in_dim(tok, ts, tc)
        lse_c = jax.lax.dynamic_slice_in_dim(lse, ts, tc)
        # rows shared with the previous token chunk were counted there: zero cotangent here
        g_c = jnp.where(ts + row >= want_t, jax.lax.dynamic_slice_in_dim(g, ts, tc), 0.0)

        def vocab_body(j, inner):
            dh_c, dw, db = inner
            want, vs = _starts(j, vc, v)
            z, w_c = _block_logits(h_c, w, bias, vs, vc, cdt)
            fresh = (vs + col >= want)[None, :]
            p = jnp.where(fresh, jnp.exp(z - lse_c[:, None]), 0.0)
            onehot = fresh & (vs + col[None, :] == tok_c[:, None])
            dz = g_c[:, None] * (onehot.astype(jnp.float32) - p)  # [tc, vc], f32
            dz_c = dz.astype(cdt)
            dh_c = dh_c + jnp.dot(dz_c, w_c.T, preferred_element_type=jnp.float32)
            dw_blk = jnp.dot(h_c.T, dz_c, preferred_element_type=jnp.float32)
            dw = jax.lax.dynamic_update_slice_in_dim(
                dw, jax.lax.dynamic_slice_in_dim(dw, vs, vc, axis=1) + dw_blk, vs, axis=1
            )
            if db is not None:
                db = jax.lax.dynamic_update_slice_in_dim(
                    db, jax.lax.dynamic_slice_in_dim(db, vs, vc) + jnp.sum(dz, axis=0), vs, 0
                )
            return dh_c, dw, db

        dh_c, dw, db = jax.lax.fori_loop(
            0, n_voc, vocab_body, (jnp.zeros((tc, d), jnp.float32), dw, db)
        )
        dh = jax.lax.dynamic_update_slice_in_dim(
            dh, jax.lax.dynamic_slice_in_dim(dh, ts, tc) + dh_c, ts, 0
        )
        return dh, dw, db

    init = (
        jnp.zeros((n, d), jnp.float32),
        jnp.zeros((d, v), jnp.float32),
        None if bias is None else jnp.zeros((v,), jnp.float32),
    )
    dh, dw, db = jax.lax.fori_loop(0, n_tok, token_body, init)
    db = None if bias is None else db.astype(bias.dtype)
    return dh.astype(h.dtype), dw.astype(w.dtype), db, None, None


_log_probs_flat.defvjp(_log_probs_fwd, _log_probs_bwd)


# --------------------------------------------------------------------------------------------
# Public functions.


def chunked_log_probs(
    h_bsd,
    w_dv,
    tokens_bs,
    mask_bs=None,
    bias_v=None,
    *,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
    token_chunk: int = DEFAULT_TOKEN_CHUNK,
) -> jax.Array:
    r"""Log-probabilities of the sampled tokens, chunked over the vocabulary and the tokens.

    .. math::

        \log\pi_{bs} = z_{b s y_{bs}} - \operatorname{logsumexp}_v z_{bsv}, \qquad
        z_{bsv} = h_{bs}\cdot w_{:,v} + \text{bias}_v ,

    computed (and differentiated, with respect to ``h_bsd``, ``w_dv`` and ``bias_v``) one
    ``[token_chunk, vocab_chunk]`` block of logits at a time; the memory beyond the inputs and
    their gradients is a few such blocks and ``O(B·S)`` floats, whatever ``V`` and ``S``. See the
    module docstring for the algorithm and for what the ``custom_vjp`` breaks (forward mode).

    Args:
      h_bsd: ``[B, S, d]`` hidden states (float32 or bfloat16); ``h[b, s]`` predicts
        ``tokens_bs[b, s]``.
      w_dv: ``[d, V]`` unembedding (the transpose of a ``[V, d]`` embedding table).
      tokens_bs: ``[B, S]`` integer token ids in ``[0, V)``.
      mask_bs: ``[B, S]`` token mask, or ``None`` (every token counts). Where it is 0 the
        log-prob is 0 (the sequence losses' convention for padding), its gradient is zero and
        the token id is ignored (may be out of range, e.g. ``-100``).
      bias_v: ``[V]`` output bias, or ``None``.
      vocab_chunk: vocabulary entries per block (a Python int ≥ 1; larger than ``V`` means
        ``V``).
      token_chunk: tokens (of the ``B·S``) per block (a Python int ≥ 1).

    Returns:
      ``[B, S]`` float32 log-probabilities (0 where masked; NaN for an unmasked token id
      outside ``[0, V)`` under ``jit``, where it cannot be refused).

    Example:
      >>> logp_bs = chunked_log_probs(h_bsd, w_dv, tokens_bs, mask_bs, vocab_chunk=8192)

    References:
      Milakov & Gimelshein (2018), arXiv:1805.02867; Wijmans et al. (2025), arXiv:2411.09009.
    """
    fn = "chunked_log_probs"
    h, w, tok, mask, bias, vc, tc = _check_inputs(
        h_bsd, w_dv, tokens_bs, mask_bs, bias_v, vocab_chunk, token_chunk, fn
    )
    b, s, d = h.shape
    n = b * s
    valid = jnp.ones((n,), bool) if mask is None else (mask != 0).reshape(n)
    logp = _log_probs_flat(
        min(vc, w.shape[1]),
        min(tc, n),
        h.reshape(n, d),
        w,
        bias,
        tok.reshape(n).astype(jnp.int32),
        valid,
    )
    return logp.reshape(b, s)


def dense_log_probs(h_bsd, w_dv, tokens_bs, mask_bs=None, bias_v=None) -> jax.Array:
    r"""The same log-probabilities as :func:`chunked_log_probs`, from materialised logits.

    Holds the ``[B, S, V]`` float32 logits (and, under ``jax.grad``, their softmax): the
    reference for tests and benchmarks, and the choice when the logits fit in memory and
    forward-mode derivatives (``jax.jvp``, ``jax.hessian``) are needed. Same arguments, checks
    and dtypes (matmul in the inputs' dtype, float32 accumulation and log-softmax).

    Returns:
      ``[B, S]`` float32 log-probabilities (0 where masked).
    """
    fn = "dense_log_probs"
    h, w, tok, mask, bias, _, _ = _check_inputs(h_bsd, w_dv, tokens_bs, mask_bs, bias_v, 1, 1, fn)
    cdt = jnp.result_type(h.dtype, w.dtype)
    z = jnp.einsum("bsd,dv->bsv", h.astype(cdt), w.astype(cdt), preferred_element_type=jnp.float32)
    if bias is not None:
        z = z + bias.astype(jnp.float32)[None, None, :]
    v = w.shape[1]
    in_range = (tok >= 0) & (tok < v)
    lp = jnp.take_along_axis(
        jax.nn.log_softmax(z, axis=-1), jnp.clip(tok, 0, v - 1)[..., None], axis=-1
    )[..., 0]
    lp = jnp.where(in_range, lp, jnp.nan)
    return lp if mask is None else jnp.where(mask != 0, lp, 0.0)


def chunked_policy_loss(
    loss_fn: Callable[[jax.Array], jax.Array],
    h_bsd,
    w_dv,
    tokens_bs,
    mask_bs=None,
    bias_v=None,
    *,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
    token_chunk: int = DEFAULT_TOKEN_CHUNK,
) -> jax.Array:
    r"""Any loss of the tokens' log-probabilities, with the log-probs chunked over the vocabulary.

    .. math::

        L = \ell\big(\log\pi(y_{bs}\mid\cdot)_{b,s}\big), \qquad
        \nabla_{h,w} L = \sum_{b,s} \frac{\partial \ell}{\partial \log\pi_{bs}}\,
        \nabla_{h,w} \log\pi_{bs} ,

    where ``ℓ = loss_fn`` maps the ``[B, S]`` float32 log-probs (:func:`chunked_log_probs`) to a
    scalar: any per-token policy-gradient loss of :mod:`expectax.rl.sequence` (clipped or not,
    any ``loss_agg_mode``, plus KL terms), with its other inputs (advantages, old and reference
    log-probs, the mask) closed over. ``∂ℓ/∂ log π`` is ``[B, S]`` and comes from ordinary
    autodiff of ``loss_fn``; only the log-probs are chunked.

    Args:
      loss_fn: ``logp_bs -> scalar``.
      h_bsd, w_dv, tokens_bs, mask_bs, bias_v, vocab_chunk, token_chunk: as in
        :func:`chunked_log_probs`.

    Returns:
      The scalar loss (differentiable with respect to ``h_bsd``, ``w_dv`` and ``bias_v``).

    Example:
      >>> from expectax.rl import sequence as seq
      >>> adv = seq.rloo_advantages(rewards_gk).reshape(-1)        # (B,), B = G·K
      >>> def loss_fn(logp_bs):
      ...     return seq.sequence_policy_loss(logp_bs[None], adv[None], mask_bs[None])
      >>> loss, (dh, dw) = jax.value_and_grad(chunked_policy_loss, argnums=(1, 2))(
      ...     loss_fn, h_bsd, w_dv, tokens_bs, mask_bs)
    """
    fn = "chunked_policy_loss"
    if not callable(loss_fn):
        raise TypeError(
            f"{fn}: loss_fn must be a callable logp_bs -> scalar loss, got {type(loss_fn).__name__}"
            ". Pass e.g. lambda lp: sequence_policy_loss(lp[None], adv[None], mask[None])."
        )
    logp = chunked_log_probs(
        h_bsd,
        w_dv,
        tokens_bs,
        mask_bs,
        bias_v,
        vocab_chunk=vocab_chunk,
        token_chunk=token_chunk,
    )
    out = jnp.asarray(loss_fn(logp))
    if out.shape != ():
        raise ValueError(
            f"{fn}: loss_fn must return a scalar, got shape {out.shape}. Aggregate the per-token "
            "losses (e.g. expectax.rl.sequence.aggregate_loss)."
        )
    return out


def _as_bs(name: str, x, like_shape, fn: str, allow_b: bool = False):
    if x is None:
        return None
    arr = jnp.asarray(x)
    if arr.shape == tuple(like_shape) or (allow_b and arr.shape == tuple(like_shape[:1])):
        return arr[None]
    want = f"{tuple(like_shape[:1])} or {tuple(like_shape)}" if allow_b else f"{tuple(like_shape)}"
    raise ValueError(
        f"{fn}: {name} has shape {arr.shape}; expected {want} (B = {like_shape[0]} sequences, "
        f"S = {like_shape[1]} tokens). Flatten per-group values with .reshape(-1)."
    )


def chunked_sequence_policy_loss(
    h_bsd,
    w_dv,
    tokens_bs,
    advantages,
    mask_bs=None,
    old_logp_bs=None,
    clip_eps: float | None = None,
    clip_eps_high: float | None = None,
    loss_agg_mode: LossAggMode = "seq-mean-token-sum",
    constant: float | None = None,
    bias_v=None,
    *,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
    token_chunk: int = DEFAULT_TOKEN_CHUNK,
) -> jax.Array:
    r""":func:`expectax.rl.sequence.sequence_policy_loss` from hidden states, chunked over V.

    The ``B`` sequences are one group (``(1, B, S)`` for ``sequence_policy_loss``); its value
    and gradient equal ``sequence_policy_loss(dense log-probs, ...)`` (REINFORCE, RLOO, GRPO,
    PPO/DAPO clipping, every ``loss_agg_mode``).

    Args:
      h_bsd, w_dv, tokens_bs: as in :func:`chunked_log_probs`.
      advantages: ``(B,)`` per sequence or ``(B, S)`` per token (constants), e.g.
        ``rloo_advantages(rewards_gk).reshape(-1)``.
      mask_bs: ``[B, S]`` token mask.
      old_logp_bs: ``[B, S]`` log-probs under the sampling policy (PPO-style reuse), or ``None``.
      clip_eps, clip_eps_high, loss_agg_mode, constant: as in ``sequence_policy_loss``.
      bias_v, vocab_chunk, token_chunk: as in :func:`chunked_log_probs`.

    Returns:
      The scalar loss to minimise.
    """
    fn = "chunked_sequence_policy_loss"
    _check_inputs(h_bsd, w_dv, tokens_bs, mask_bs, bias_v, vocab_chunk, token_chunk, fn)
    shape = jnp.shape(tokens_bs)
    adv = _as_bs("advantages", advantages, shape, fn, allow_b=True)
    mask = _as_bs("mask_bs", mask_bs, shape, fn)
    old = _as_bs("old_logp_bs", old_logp_bs, shape, fn)

    def loss_fn(logp_bs):
        return sequence_policy_loss(
            logp_bs[None],
            adv,
            mask,
            old,
            clip_eps=clip_eps,
            clip_eps_high=clip_eps_high,
            loss_agg_mode=loss_agg_mode,
            constant=constant,
        )

    return chunked_policy_loss(
        loss_fn,
        h_bsd,
        w_dv,
        tokens_bs,
        mask_bs,
        bias_v,
        vocab_chunk=vocab_chunk,
        token_chunk=token_chunk,
    )


def chunked_kl_loss(
    h_bsd,
    w_dv,
    tokens_bs,
    ref_logp_bs,
    mask_bs=None,
    estimator: str = "k3",
    loss_agg_mode: LossAggMode = "seq-mean-token-sum",
    level: str = "token",
    constant: float | None = None,
    bias_v=None,
    *,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
    token_chunk: int = DEFAULT_TOKEN_CHUNK,
) -> jax.Array:
    r""":func:`expectax.rl.sequence.kl_loss` from hidden states, chunked over the vocabulary.

    The KL-to-reference term (``loss + β · kl``) with the current policy's log-probs from
    :func:`chunked_log_probs`; the ``B`` sequences are one group, as in
    :func:`chunked_sequence_policy_loss`. To add it to a policy loss in one pass over the
    vocabulary, use :func:`chunked_policy_loss` with a ``loss_fn`` that returns both terms.

    Args:
      h_bsd, w_dv, tokens_bs: as in :func:`chunked_log_probs`.
      ref_logp_bs: ``[B, S]`` log-probs under the reference policy.
      mask_bs: ``[B, S]`` token mask.
      estimator, loss_agg_mode, level, constant: as in ``kl_loss``.
      bias_v, vocab_chunk, token_chunk: as in :func:`chunked_log_probs`.

    Returns:
      The scalar KL loss term.
    """
    fn = "chunked_kl_loss"
    _check_inputs(h_bsd, w_dv, tokens_bs, mask_bs, bias_v, vocab_chunk, token_chunk, fn)
    shape = jnp.shape(tokens_bs)
    ref = _as_bs("ref_logp_bs", ref_logp_bs, shape, fn)
    if ref is None:
        raise TypeError(f"{fn}: ref_logp_bs is required, got None.")
    mask = _as_bs("mask_bs", mask_bs, shape, fn)

    def loss_fn(logp_bs):
        return kl_loss(
            logp_bs[None],
            ref,
            mask,
            estimator=estimator,
            loss_agg_mode=loss_agg_mode,
            level=level,
            constant=constant,
        )

    return chunked_policy_loss(
        loss_fn,
        h_bsd,
        w_dv,
        tokens_bs,
        mask_bs,
        bias_v,
        vocab_chunk=vocab_chunk,
        token_chunk=token_chunk,
    )
