"""Memory and time of a policy-gradient loss's value and gradient: dense logits vs chunked.

    python benchmarks/vocab_memory.py [--batch 1] [--dim 128] [--seq 512 1024 2048 4096]
        [--vocab 8192 16384 32768 65536] [--vocab-chunk 4096] [--token-chunk 1024]
        [--repeats 5] [--seed 0] [--max-run-mib 3000] [--markdown]

For each (S, V) the value and gradient (with respect to h and w) of a PPO-clipped, GRPO-style
loss (``sequence_policy_loss`` with ``old_logp``, ``clip_eps=0.2``, ``clip_eps_high=0.28``,
``loss_agg_mode="seq-mean-token-mean"``) is compiled twice under ``jax.jit``: once on
``dense_log_probs`` (the [B, S, V] float32 logits materialised) and once on
``chunked_log_probs`` (:mod:`expectax.rl.vocab`). Printed: XLA's compiled memory analysis,
``temp`` (temporary buffers, what the loss adds) and ``total`` = temp + arguments + outputs
(h, w, tokens, advantages, mask, old log-probs in; loss, dh, dw out), and the median wall time
of ``--repeats`` runs after one warm-up (dense and chunked interleaved). A dense program whose
compiled total exceeds ``--max-run-mib`` is compiled but not run (its time shows as "—").
Inputs are drawn from ``jax.random.key(seed)``; float32 throughout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from expectax.rl import sequence as seq
from expectax.rl import vocab

MIB = 2**20


def make_inputs(key, b: int, s: int, d: int, v: int):
    k = jax.random.split(key, 5)
    h = jax.random.normal(k[0], (b, s, d), jnp.float32)
    w = jax.random.normal(k[1], (d, v), jnp.float32) / jnp.sqrt(d)
    tokens = jax.random.randint(k[2], (b, s), 0, v)
    lengths = jax.random.randint(k[3], (b, 1), s // 2, s + 1)
    mask = (jnp.arange(s)[None, :] < lengths).astype(jnp.float32)
    adv = jax.random.normal(k[4], (b,), jnp.float32)
    return h, w, tokens, adv, mask


def make_step(log_probs):
    """jit(value_and_grad) of a clipped GRPO-style loss on the given log-prob function."""

    def loss(h, w, tokens, adv, mask, old_logp):
        logp = log_probs(h, w, tokens, mask)
        return seq.sequence_policy_loss(
            logp[None],
            adv[None],
            mask[None],
            old_logp[None],
            clip_eps=0.2,
            clip_eps_high=0.28,
            loss_agg_mode="seq-mean-token-mean",
        )

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def memory(compiled) -> tuple[float, float]:
    m = compiled.memory_analysis()
    temp = m.temp_size_in_bytes
    total = temp + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return temp / MIB, total / MIB


def timed(fn, args, repeats: int) -> list[float]:
    jax.block_until_ready(fn(*args))  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    ap.add_argument("--vocab-chunk", type=int, default=vocab.DEFAULT_VOCAB_CHUNK)
    ap.add_argument("--token-chunk", type=int, default=vocab.DEFAULT_TOKEN_CHUNK)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-run-mib", type=float, default=3000.0)
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()

    def chunked(h, w, t, m):
        return vocab.chunked_log_probs(
            h, w, t, m, vocab_chunk=args.vocab_chunk, token_chunk=args.token_chunk
        )

    dense_step = make_step(vocab.dense_log_probs)
    chunk_step = make_step(chunked)
    device = jax.devices()[0]
    print(
        f"# device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
        f"B={args.batch} d={args.dim} vocab_chunk={args.vocab_chunk} "
        f"token_chunk={args.token_chunk} repeats={args.repeats} seed={args.seed}"
    )
    head = (
        "| S | V | dense temp MiB | dense total MiB | chunked temp MiB | chunked total MiB "
        "| dense ms | chunked ms | chunked/dense time | max abs diff (loss, dh, dw) |"
    )
    print(head if args.markdown else head.replace("|", " ").strip())
    if args.markdown:
        print("|" + "---|" * 10)
    key = jax.random.key(args.seed)
    for s in args.seq:
        for v in args.vocab:
            h, w, tokens, adv, mask = make_inputs(key, args.batch, s, args.dim, v)
            old = jax.lax.stop_gradient(chunked(h, w, tokens, mask)) + 0.05 * mask
            old = jnp.minimum(old, 0.0)
            call = (h, w, tokens, adv, mask, old)
            dense_c = dense_step.lower(*call).compile()
            chunk_c = chunk_step.lower(*call).compile()
            d_temp, d_total = memory(dense_c)
            c_temp, c_total = memory(chunk_c)
            run_dense = d_total <= args.max_run_mib
            if run_dense:
                td, tc = [], []
                for _ in range(args.repeats):  # interleaved: the same load for both
                    td += timed(dense_c, call, 1)
                    tc += timed(chunk_c, call, 1)
                dm, cm = statistics.median(td) * 1e3, statistics.median(tc) * 1e3
                (lv, (dh, dw)), (lv2, (dh2, dw2)) = dense_c(*call), chunk_c(*call)
                err = (
                    f"{abs(float(lv - lv2)):.1e}, {float(jnp.max(jnp.abs(dh - dh2))):.1e}, "
                    f"{float(jnp.max(jnp.abs(dw - dw2))):.1e}"
                )
                times = f"{dm:.1f} | {cm:.1f} | {cm / dm:.2f}×"
            else:
                tc = timed(chunk_c, call, args.repeats)
                times = f"— | {statistics.median(tc) * 1e3:.1f} | —"
                err = "— (dense not run)"
            row = (
                f"| {s} | {v} | {d_temp:.1f} | {d_total:.1f} | {c_temp:.1f} | {c_total:.1f} | "
                f"{times} | {err} |"
            )
            print(row if args.markdown else row.replace("|", " ").strip(), flush=True)


if __name__ == "__main__":
    main()
