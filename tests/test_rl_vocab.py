"""Log-probs and policy-gradient losses chunked over the vocabulary (expectax.rl.vocab).

Every chunked value and gradient is compared with the same loss on materialised logits
(``dense_log_probs``, plain autodiff) within float32 tolerance, on shapes where the vocabulary
and the token count are not multiples of their chunks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectax.rl import sequence as seq
from expectax.rl import vocab

B, S, D, V = 3, 7, 16, 37


def inputs(seed=0, b=B, s=S, d=D, v=V, dtype=jnp.float32):
    k = jax.random.split(jax.random.key(seed), 6)
    h = jax.random.normal(k[0], (b, s, d)).astype(dtype)
    w = (jax.random.normal(k[1], (d, v)) / np.sqrt(d) * 3).astype(dtype)
    bias = jax.random.normal(k[2], (v,)).astype(dtype)
    tokens = jax.random.randint(k[3], (b, s), 0, v)
    lengths = jnp.array([s, 1, s - 2])[:b]
    mask = (jnp.arange(s)[None, :] < lengths[:, None]).astype(jnp.float32)
    tokens = jnp.where(mask > 0, tokens, -100)  # padding ids out of range: must be ignored
    adv = jax.random.normal(k[4], (b,))
    return h, w, bias, tokens, mask, adv


def close(a, b, rtol=2e-5, atol=2e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol, atol)


@pytest.mark.parametrize(
    "vocab_chunk,token_chunk",
    [(8, 4), (5, 3), (37, 21), (64, 100), (1, 2), (36, 20)],
    ids=["V%8", "V%5-N%3", "one-chunk", "chunks>sizes", "vc=1", "V-1,N-1"],
)
def test_log_probs_and_grads_equal_dense(strict_ranks, vocab_chunk, token_chunk):
    h, w, bias, tokens, mask, _ = inputs()
    c = jax.random.normal(jax.random.key(9), (B, S))

    def loss(log_probs, **kw):
        return lambda h, w, b: jnp.sum(c * log_probs(h, w, tokens, mask, b, **kw) ** 2)

    chunked = loss(vocab.chunked_log_probs, vocab_chunk=vocab_chunk, token_chunk=token_chunk)
    val, grads = jax.value_and_grad(chunked, argnums=(0, 1, 2))(h, w, bias)
    ref_val, ref_grads = jax.value_and_grad(loss(vocab.dense_log_probs), argnums=(0, 1, 2))(
        h, w, bias
    )
    close(val, ref_val)
    for g, r in zip(grads, ref_grads, strict=True):
        close(g, r)
    lp = vocab.chunked_log_probs(h, w, tokens, mask, bias, vocab_chunk=vocab_chunk)
    close(lp, vocab.dense_log_probs(h, w, tokens, mask, bias))
    assert lp.dtype == jnp.float32
    assert bool(jnp.all(lp[mask == 0] == 0)) and bool(jnp.all(lp[mask > 0] < 0))
    # padding gets no gradient: h at masked positions has zero cotangent
    assert bool(jnp.all(grads[0][mask == 0] == 0))


def test_without_mask_and_bias(strict_ranks):
    h, w, _, tokens, mask, _ = inputs(1)
    tokens = jnp.where(mask > 0, tokens, 3)
    lp = vocab.chunked_log_probs(h, w, tokens, vocab_chunk=6, token_chunk=4)
    ref = jax.nn.log_softmax(jnp.einsum("bsd,dv->bsv", h, w), axis=-1)
    close(lp, jnp.take_along_axis(ref, tokens[..., None], axis=-1)[..., 0])
    f = lambda h, w: jnp.sum(vocab.chunked_log_probs(h, w, tokens, vocab_chunk=6, token_chunk=4))
    g = lambda h, w: jnp.sum(vocab.dense_log_probs(h, w, tokens))
    for a, b in zip(jax.grad(f, (0, 1))(h, w), jax.grad(g, (0, 1))(h, w), strict=True):
        close(a, b)


POLICY_VARIANTS = {
    "reinforce-seq-sum": dict(),
    "ppo-token-mean": dict(old=True, clip_eps=0.2, clip_eps_high=0.28, loss_agg_mode="token-mean"),
    "grpo-seq-mean-token-mean": dict(old=True, clip_eps=0.2, loss_agg_mode="seq-mean-token-mean"),
    "dr-grpo-norm-per-token-adv": dict(
        per_token=True, loss_agg_mode="seq-mean-token-sum-norm", constant=5.0
    ),
}


@pytest.mark.parametrize("name", list(POLICY_VARIANTS))
def test_sequence_policy_loss_equals_dense(strict_ranks, name):
    opts = dict(POLICY_VARIANTS[name])
    h, w, bias, tokens, mask, adv = inputs(2)
    if opts.pop("per_token", False):
        adv = adv[:, None] * jnp.linspace(0.5, 1.5, S)[None, :]
    old = None
    if opts.pop("old", False):  # ratios away from 1, so that the clip is active somewhere
        lp = vocab.dense_log_probs(h, w, tokens, mask, bias)
        noise = 0.4 * jax.random.normal(jax.random.key(3), (B, S))
        old = jnp.minimum(lp + noise, 0.0) * mask

    def chunked(h, w, b):
        return vocab.chunked_sequence_policy_loss(
            h, w, tokens, adv, mask, old, bias_v=b, vocab_chunk=8, token_chunk=5, **opts
        )

    def dense(h, w, b):
        lp = vocab.dense_log_probs(h, w, tokens, mask, b)
        o = None if old is None else old[None]
        return seq.sequence_policy_loss(lp[None], adv[None], mask[None], o, **opts)

    val, grads = jax.value_and_grad(chunked, argnums=(0, 1, 2))(h, w, bias)
    ref_val, ref_grads = jax.value_and_grad(dense, argnums=(0, 1, 2))(h, w, bias)
    close(val, ref_val)
    for g, r in zip(grads, ref_grads, strict=True):
        close(g, r)


@pytest.mark.parametrize("estimator,level", [("k3", "token"), ("k2", "sequence")])
def test_kl_loss_equals_dense(strict_ranks, estimator, level):
    h, w, bias, tokens, mask, _ = inputs(4)
    ref_lp = (
        jnp.minimum(
            vocab.dense_log_probs(h, w, tokens, mask, bias)
            + 0.3 * jax.random.normal(jax.random.key(5), (B, S)),
            0.0,
        )
        * mask
    )

    def chunked(h, w):
        return vocab.chunked_kl_loss(
            h, w, tokens, ref_lp, mask, estimator, level=level, bias_v=bias, vocab_chunk=7
        )

    def dense(h, w):
        lp = vocab.dense_log_probs(h, w, tokens, mask, bias)
        return seq.kl_loss(lp[None], ref_lp[None], mask[None], estimator, level=level)

    val, grads = jax.value_and_grad(chunked, argnums=(0, 1))(h, w)
    ref_val, ref_grads = jax.value_and_grad(dense, argnums=(0, 1))(h, w)
    close(val, ref_val)
    for g, r in zip(grads, ref_grads, strict=True):
        close(g, r)


def test_policy_loss_any_loss_fn_and_jit(strict_ranks):
    """A user's loss_fn (policy loss + β·KL in one pass), under jit, equals eager and dense."""
    h, w, bias, tokens, mask, adv = inputs(6)
    ref_lp = jnp.minimum(vocab.dense_log_probs(h, w, tokens, mask, bias) - 0.1, 0.0) * mask

    def loss_fn(lp):
        pg = seq.sequence_policy_loss(lp[None], adv[None], mask[None], clip_eps=0.2)
        return pg + 0.05 * seq.kl_loss(lp[None], ref_lp[None], mask[None], "k3")

    def chunked(h, w, b):
        return vocab.chunked_policy_loss(
            loss_fn, h, w, tokens, mask, b, vocab_chunk=10, token_chunk=8
        )

    def dense(h, w, b):
        return loss_fn(vocab.dense_log_probs(h, w, tokens, mask, b))

    step = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2)))
    val, grads = step(h, w, bias)
    eager_val, eager_grads = jax.value_and_grad(chunked, argnums=(0, 1, 2))(h, w, bias)
    ref_val, ref_grads = jax.value_and_grad(dense, argnums=(0, 1, 2))(h, w, bias)
    close(val, ref_val)
    close(val, eager_val, 1e-6, 1e-6)
    for g, e, r in zip(grads, eager_grads, ref_grads, strict=True):
        close(g, r)
        close(g, e, 1e-6, 1e-6)


def test_vmap_over_a_leading_axis(strict_ranks):
    h, w, bias, tokens, mask, _ = inputs(7)
    hs = jnp.stack([h, 2 * h])
    f = lambda h: vocab.chunked_log_probs(h, w, tokens, mask, bias, vocab_chunk=9, token_chunk=4)
    out = jax.vmap(f)(hs)
    close(out[1], vocab.dense_log_probs(2 * h, w, tokens, mask, bias))


def test_bfloat16_inputs_accumulate_in_float32(strict_ranks):
    h, w, bias, tokens, mask, adv = inputs(8, dtype=jnp.bfloat16)

    def chunked(h, w, b):
        return vocab.chunked_sequence_policy_loss(
            h, w, tokens, adv, mask, bias_v=b, vocab_chunk=8, token_chunk=5
        )

    def dense(h, w, b):
        lp = vocab.dense_log_probs(h, w, tokens, mask, b)
        return seq.sequence_policy_loss(lp[None], adv[None], mask[None])

    lp = vocab.chunked_log_probs(h, w, tokens, mask, bias, vocab_chunk=8, token_chunk=5)
    assert lp.dtype == jnp.float32
    # the bf16 products are exact in f32: only the accumulation order differs
    close(lp, vocab.dense_log_probs(h, w, tokens, mask, bias), 1e-5, 1e-5)
    f32 = [x.astype(jnp.float32) for x in (h, w, bias)]
    close(lp, vocab.dense_log_probs(f32[0], f32[1], tokens, mask, f32[2]), 1e-5, 1e-5)
    grads = jax.grad(chunked, argnums=(0, 1, 2))(h, w, bias)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
    ref = jax.grad(dense, argnums=(0, 1, 2))(*f32)  # the float32 gradient at the same point
    for g, r in zip(grads, ref, strict=True):
        scale = float(jnp.max(jnp.abs(r)))
        close(g, r, 2e-2, 2e-2 * scale)


def test_memory_flat_in_vocabulary_and_tokens(strict_ranks):
    """XLA's compiled temporary memory of value+grad does not grow with V or S (dense's does)."""

    def temp(log_probs, s, v, **kw):
        h, w, _, tokens, mask, adv = inputs(0, b=1, s=s, d=8, v=v)

        def loss(h, w):
            lp = log_probs(h, w, tokens, mask, **kw)
            return seq.sequence_policy_loss(lp[None], adv[None], mask[None])

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return step.lower(h, w).compile().memory_analysis().temp_size_in_bytes

    kw = dict(vocab_chunk=256, token_chunk=64)
    small = temp(vocab.chunked_log_probs, 256, 1024, **kw)
    bigger_v = temp(vocab.chunked_log_probs, 256, 8192, **kw)
    bigger_s = temp(vocab.chunked_log_probs, 2048, 1024, **kw)
    block = 64 * 256 * 4  # one float32 block of logits
    assert bigger_v <= small + block  # flat in V
    # flat in S apart from O(S·d) and O(S): the f32 dh accumulator (d = 8), lse and log-probs
    assert bigger_s <= small + (2048 - 256) * (8 + 8) * 4 + block
    dense_small = temp(vocab.dense_log_probs, 256, 1024)
    assert temp(vocab.dense_log_probs, 256, 8192) > 4 * dense_small > 4 * small


def test_forward_mode_is_refused(strict_ranks):
    h, w, bias, tokens, mask, _ = inputs()
    f = lambda h: jnp.sum(vocab.chunked_log_probs(h, w, tokens, mask, bias))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, (h,), (h,))
    # the dense reference supports it
    jax.jvp(lambda h: jnp.sum(vocab.dense_log_probs(h, w, tokens, mask, bias)), (h,), (h,))


# --------------------------------------------------------------------------------------------
# Errors


def test_errors_name_the_argument():
    h, w, bias, tokens, mask, adv = inputs()
    f = vocab.chunked_log_probs
    with pytest.raises(ValueError, match=r"h_bsd must have rank 3"):
        f(h[0], w, tokens)
    with pytest.raises(ValueError, match=r"w_dv has shape \(37, 16\).*pass its transpose, w.T"):
        f(h, w.T, tokens)
    with pytest.raises(ValueError, match=r"w_dv must have rank 2"):
        f(h, w[None], tokens)
    with pytest.raises(TypeError, match=r"h_bsd must be a floating-point"):
        f(h.astype(jnp.int32), w, tokens)
    with pytest.raises(TypeError, match=r"tokens_bs must hold integer token ids"):
        f(h, w, tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"tokens_bs has shape \(3, 6\) but h_bsd has"):
        f(h, w, tokens[:, :-1])
    with pytest.raises(ValueError, match=r"mask_bs has shape \(3, 6\)"):
        f(h, w, tokens, mask[:, :-1])
    with pytest.raises(ValueError, match=r"mask_bs must hold 1 for tokens and 0"):
        f(h, w, tokens, mask * 2)
    with pytest.raises(ValueError, match=r"bias_v has shape \(36,\) but w_dv has V = 37"):
        f(h, w, tokens, mask, bias[:-1])
    with pytest.raises(ValueError, match=r"vocab_chunk must be ≥ 1, got 0"):
        f(h, w, tokens, mask, vocab_chunk=0)
    with pytest.raises(TypeError, match=r"token_chunk must be a Python int"):
        f(h, w, tokens, mask, token_chunk=2.5)
    with pytest.raises(TypeError, match=r"vocab_chunk must be a Python int"):
        f(h, w, tokens, mask, vocab_chunk=True)
    with pytest.raises(ValueError, match=r"tokens_bs has id -100 at index \(1, 1\), outside"):
        f(h, w, tokens)  # padding ids without the mask that marks them
    with pytest.raises(ValueError, match=r"tokens_bs has id 37 .* outside the vocabulary"):
        f(h, w, jnp.full((B, S), V))
    with pytest.raises(ValueError, match=r"empty input"):
        f(h[:, :0], w, tokens[:, :0])


def test_loss_errors():
    h, w, bias, tokens, mask, adv = inputs()
    with pytest.raises(TypeError, match=r"loss_fn must be a callable"):
        vocab.chunked_policy_loss("grpo", h, w, tokens, mask)
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar, got shape \(3, 7\)"):
        vocab.chunked_policy_loss(lambda lp: lp, h, w, tokens, mask)
    with pytest.raises(ValueError, match=r"advantages has shape \(2,\); expected \(3,\) or"):
        vocab.chunked_sequence_policy_loss(h, w, tokens, adv[:2], mask)
    with pytest.raises(ValueError, match=r"old_logp_bs has shape \(3,\); expected \(3, 7\)"):
        vocab.chunked_sequence_policy_loss(h, w, tokens, adv, mask, old_logp_bs=adv)
    with pytest.raises(ValueError, match=r"tokens_bs must have rank 2"):
        vocab.chunked_sequence_policy_loss(h, w, tokens[0], adv, mask)
    with pytest.raises(TypeError, match=r"ref_logp_bs is required"):
        vocab.chunked_kl_loss(h, w, tokens, None, mask)
    with pytest.raises(ValueError, match=r"loss_agg_mode must be one of"):
        vocab.chunked_sequence_policy_loss(h, w, tokens, adv, mask, loss_agg_mode="mean")


def test_out_of_range_token_under_jit_is_nan():
    h, w, bias, tokens, mask, _ = inputs()
    lp = jax.jit(lambda t: vocab.chunked_log_probs(h, w, t, vocab_chunk=8))(tokens)
    assert bool(jnp.all(jnp.isnan(lp[mask == 0]))) and bool(jnp.all(jnp.isfinite(lp[mask > 0])))
