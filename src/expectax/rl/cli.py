"""``expectax rl``: train REINFORCE on a Gymnasium environment (or the pure-JAX CartPole), and
``expectax rl evaluate``: evaluate a trained policy.

Every hyperparameter is a flag; the defaults solve CartPole-v1 on most seeds (docs/rl.md says
how often). The exit status says whether the run solved: 0 solved (or the environment has no
threshold), 1 not solved, 2 an error, 130 interrupted. Also runnable as
``python -m expectax.rl.cli``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from expectax import cliutil, runio

__all__ = ["configure_parser", "main", "run"]

DEFAULT_OUT = "runs/rl-ENV-sSEED"


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``expectax rl`` flags to ``parser``."""
    from expectax.rl.train import BASELINES, Config

    d = Config()
    pos, fin = runio.positive_int, runio.finite_float

    parser.add_argument(
        "action",
        nargs="?",
        choices=("train", "evaluate"),
        default="train",
        help="train (default) or evaluate a trained policy (--checkpoint DIR)",
    )
    parser.add_argument("--env", default=d.env_id, help="Gymnasium environment id")
    parser.add_argument(
        "--backend",
        choices=("auto", "gymnasium", "jax"),
        default=None,
        help="gymnasium (any classic-control env), jax (pure-JAX CartPole-v1, jit-compiled), "
        "auto (default: jax where available, i.e. CartPole-v1)",
    )
    parser.add_argument(
        "--policy",
        choices=("auto", "softmax", "bernoulli", "gaussian"),
        default=d.policy,
        help="auto: softmax for Discrete, gaussian for Box action spaces",
    )
    parser.add_argument(
        "--hidden", type=pos, nargs="+", default=list(d.hidden), help="hidden layer sizes"
    )
    parser.add_argument(
        "--input-gain",
        type=fin,
        default=d.input_gain,
        help="scale of the first layer's initial weights (LeCun-normal × gain)",
    )
    parser.add_argument(
        "--episodes",
        type=pos,
        default=None,
        help=f"training episodes (default {d.episodes}); with evaluate: evaluation episodes "
        "(default 100)",
    )
    parser.add_argument(
        "--batch-episodes", type=pos, default=d.batch_episodes, help="episodes per update"
    )
    parser.add_argument("--gamma", type=fin, default=d.gamma, help="discount")
    parser.add_argument(
        "--lr-final-fraction",
        type=fin,
        default=d.lr_final_fraction,
        help="decay the learning rate linearly to this fraction of --lr (default 1: constant)",
    )
    parser.add_argument(
        "--adam-b1",
        type=fin,
        default=d.adam_b1,
        help=f"Adam's momentum decay (default {d.adam_b1}; Adam's usual 0.9 collapses more "
        "often on CartPole)",
    )
    parser.add_argument("--adam-b2", type=fin, default=d.adam_b2, help="Adam's second-moment decay")
    parser.add_argument("--adam-eps", type=fin, default=d.adam_eps, help="Adam's epsilon")
    parser.add_argument(
        "--max-grad-norm",
        type=fin,
        default=d.max_grad_norm,
        help="clip each batch's gradient to this global norm before Adam (default: no clipping)",
    )
    parser.add_argument(
        "--skip-zero-grad-steps",
        action=argparse.BooleanOptionalAction,
        default=d.skip_zero_grad_steps,
        help="no Adam step after a batch whose gradient is exactly 0 (all returns equal)",
    )
    parser.add_argument(
        "--late-return",
        type=fin,
        default=d.late_return,
        help="after a training batch reaches this mean return, average --late-batch-factor "
        "batches per Adam step (default: never)",
    )
    parser.add_argument(
        "--late-batch-factor",
        type=pos,
        default=d.late_batch_factor,
        help=f"batches per Adam step after --late-return (default {d.late_batch_factor})",
    )
    parser.add_argument(
        "--baseline",
        choices=BASELINES,
        default=d.baseline,
        help=f"the score-function baseline (default {d.baseline})",
    )
    parser.add_argument(
        "--normalize-advantages",
        action=argparse.BooleanOptionalAction,
        default=d.normalize_advantages,
        help="standardise advantages over each batch",
    )
    parser.add_argument(
        "--entropy-coef",
        type=fin,
        default=d.entropy_coef,
        help=f"weight of the entropy bonus (default {d.entropy_coef:g})",
    )
    parser.add_argument("--value-coef", type=fin, default=d.value_coef, help="critic loss weight")
    parser.add_argument(
        "--eval-every",
        type=runio.nonneg_int,
        default=d.eval_every,
        help="also evaluate every N batches for the learning curve (default 0: only to confirm)",
    )
    parser.add_argument(
        "--eval-episodes",
        type=pos,
        default=d.eval_episodes,
        help="episodes of each periodic evaluation (--eval-every)",
    )
    parser.add_argument(
        "--confirm-episodes",
        type=pos,
        default=d.confirm_episodes,
        help="episodes of the fresh evaluation that confirms 'solved' (≥ 100, default 100)",
    )
    parser.add_argument(
        "--confirm-margin",
        type=runio.nonneg_float,
        default=d.confirm_margin,
        metavar="K",
        help="solved only when the confirming evaluation's mean minus K standard errors of that "
        f"mean reaches the threshold (default {d.confirm_margin:g}; 0: the mean alone; "
        "docs/rl.md says how K was chosen)",
    )
    parser.add_argument(
        "--solve-threshold",
        type=fin,
        default=None,
        help="mean evaluation return that counts as solved (default: the env's reward_threshold)",
    )
    parser.add_argument(
        "--stop-when-solved",
        action=argparse.BooleanOptionalAction,
        default=d.stop_when_solved,
        help="stop training once a fresh evaluation confirms the threshold",
    )
    parser.add_argument(
        "--max-zero-grad-batches",
        type=pos,
        default=d.max_zero_grad_batches,
        help="stop with an error after this many batches in a row with an exactly zero gradient",
    )
    runio.add_common_flags(parser, lr=d.learning_rate, out=DEFAULT_OUT)
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.npz if it exists"
    )
    parser.add_argument(
        "--checkpoint-every", type=pos, default=1, help="save a checkpoint every N batches"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="DIR",
        help="evaluate: the output directory of a training run",
    )
    parser.add_argument(
        "--greedy",
        action="store_true",
        help="evaluate: take the most likely action instead of sampling",
    )
    parser.add_argument(
        "--devices",
        type=pos,
        default=None,
        metavar="N",
        help="split each batch's episodes over N devices (JAX backend, CartPole-v1; the batch, "
        "confirmation and evaluation sizes must be multiples of N). On CPU the N devices are "
        "host devices of the same cores: a check of the sharded path, not a speed-up",
    )
    parser.add_argument("--throttle", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


def _out_for(args: argparse.Namespace, seed: int) -> Path:
    if args.out == DEFAULT_OUT:
        return Path("runs") / f"rl-{args.env}-s{seed}"
    return Path(args.out) if len(args.seed) == 1 else Path(args.out) / f"seed-{seed}"


def device_mesh(n: int):
    """A one-axis mesh (``"episodes"``) of the first ``n`` devices.

    On CPU, asks JAX for ``n`` host devices (``jax_num_cpu_devices``) when JAX has not started
    yet and ``XLA_FLAGS`` does not already set their number; a JAX that has already started
    (e.g. ``main()`` called inside a program that used JAX) keeps the devices it has.
    """
    import os

    import jax
    import numpy as np
    from jax.sharding import Mesh

    flag = "--xla_force_host_platform_device_count"
    if n > 1 and flag not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # JAX has started already: it keeps its devices
            pass
    devices = jax.devices()
    if len(devices) < n:
        raise ValueError(
            f"--devices {n}: JAX has {len(devices)} {devices[0].platform} device(s). Use "
            f"--devices {len(devices)} or fewer; on CPU, run `expectax rl --devices {n}` as a "
            f"process of its own (it asks for {n} host devices before JAX starts) or set "
            f"XLA_FLAGS={flag}={n} before starting Python."
        )
    return Mesh(np.array(devices[:n]), ("episodes",))


def _fail(err: Exception) -> int:
    return cliutil.fail("expectax rl", err)


def run(args: argparse.Namespace) -> int:
    """Run ``expectax rl`` with parsed ``args``; returns the exit code (0 solved, 1 not
    solved, 2 error, 130 after Ctrl-C)."""
    if args.action == "evaluate":
        return _evaluate(args)
    if args.checkpoint is not None or args.greedy:
        return _fail(ValueError("--checkpoint and --greedy belong to `expectax rl evaluate`."))
    from expectax.rl.train import Config, TrainingError, check_trainer_mesh, train

    mesh = None

    configs = []
    try:
        for seed in args.seed:
            config = Config(
                env_id=args.env,
                backend=args.backend or "auto",
                policy=args.policy,
                hidden=tuple(args.hidden),
                input_gain=args.input_gain,
                episodes=args.episodes if args.episodes is not None else Config.episodes,
                batch_episodes=args.batch_episodes,
                learning_rate=args.lr,
                gamma=args.gamma,
                lr_final_fraction=args.lr_final_fraction,
                adam_b1=args.adam_b1,
                adam_b2=args.adam_b2,
                adam_eps=args.adam_eps,
                max_grad_norm=args.max_grad_norm,
                skip_zero_grad_steps=args.skip_zero_grad_steps,
                late_return=args.late_return,
                late_batch_factor=args.late_batch_factor,
                baseline=args.baseline,
                normalize_advantages=args.normalize_advantages,
                entropy_coef=args.entropy_coef,
                value_coef=args.value_coef,
                eval_every=args.eval_every,
                eval_episodes=args.eval_episodes,
                confirm_episodes=args.confirm_episodes,
                confirm_margin=args.confirm_margin,
                solve_threshold=args.solve_threshold,
                stop_when_solved=args.stop_when_solved,
                max_zero_grad_batches=args.max_zero_grad_batches,
                seed=seed,
            )
            config.validate()
            configs.append(config)
        if args.devices is not None:
            mesh = device_mesh(args.devices)
            for config in configs:
                check_trainer_mesh(config, mesh)
        # every --out is checked (writable, not an earlier run) before any training starts
        from expectax.rl.train import check_out_dir

        for config in configs:
            out = _out_for(args, config.seed)
            if not (args.resume and (out / "checkpoint.npz").exists()):
                check_out_dir(out, resume=args.resume, overwrite=args.overwrite)
    except ValueError as err:
        return _fail(err)
    # Ctrl-C arrives as KeyboardInterrupt (restore Python's handler in case a host changed it);
    # train() saves a checkpoint of the last completed batch before returning.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    summaries = []
    code = 0
    for config in configs:
        out = _out_for(args, config.seed)
        try:
            result = train(
                config,
                out,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
                checkpoint_every=args.checkpoint_every,
                throttle=args.throttle,
                mesh=mesh,
            )
        except TrainingError as err:  # this seed could not go on; the other seeds still run
            print(f"expectax rl: error: seed {config.seed}: {err}", file=sys.stderr)
            summaries.append({"seed": config.seed, "error": str(err), "out": str(out)})
            code = 2
            continue
        except ValueError as err:
            return _fail(err)
        summary = {k: v for k, v in result.items() if k not in ("state", "history")}
        summary["out"] = str(out)
        summaries.append(summary)
        if result["interrupted"]:
            print(
                f"interrupted after {result['training_episodes']} training episodes; checkpoint "
                f"saved to {out / 'checkpoint.npz'} (continue with --resume)",
                file=sys.stderr,
            )
            return 130
        if not args.json:
            print(_describe(result, out))
        if result["threshold"] is not None and not result["solved"]:
            code = max(code, 1)
    if args.json:
        doc = summaries[0] if len(summaries) == 1 else summaries
        print(json.dumps(runio.json_safe(doc), indent=2, allow_nan=False))
    return code


def _describe(r: dict, out: Path) -> str:
    head = (
        f"{r['env_id']} seed {r['seed']}: {r['training_episodes']} training episodes, "
        f"{r['eval_episodes']} evaluation episodes, {r['wall_time']:.1f}s; "
    )
    if r["solved"]:
        k = r["config"]["confirm_margin"]
        margin = f" − {k:g} × {r['confirm_se']:.1f} (SE)" if k else ""
        what = (
            f"solved after {r['episodes_to_solve']} training episodes (a fresh evaluation "
            f"confirmed {r['confirm_return']:.1f}{margin} ≥ {r['threshold']:g})"
        )
    elif r["threshold"] is None:
        what = "no solve threshold"
    else:
        what = f"not solved (threshold {r['threshold']:g})"
    if r["final_eval"] is not None:
        what += f"; final policy: {r['final_eval']:.1f} on fresh episodes"
    return head + what + f"; outputs in {out}"


def _evaluate(args: argparse.Namespace) -> int:
    from expectax.rl.policy_io import load_policy

    if args.checkpoint is None:
        return _fail(ValueError("evaluate needs --checkpoint DIR (the --out of a training run)."))
    if args.devices is not None:
        return _fail(ValueError("--devices belongs to training; evaluate runs on one device."))
    if len(args.seed) != 1:
        return _fail(ValueError("evaluate takes one --seed (the evaluation's random numbers)."))
    try:
        policy = load_policy(args.checkpoint)
        res = policy.evaluate(
            episodes=args.episodes if args.episodes is not None else 100,
            backend=args.backend or "auto",
            greedy=args.greedy,
            seed=args.seed[0],
            threshold=args.solve_threshold,
        )
    except ValueError as err:
        return _fail(err)
    if args.json:
        print(json.dumps(runio.json_safe(res), indent=2, allow_nan=False))
    else:
        verdict = (
            "no solve threshold"
            if res["threshold"] is None
            else ("solved" if res["solved"] else "not solved")
            + f" (threshold {res['threshold']:g})"
        )
        print(
            f"{res['env_id']} ({res['backend']}, {'greedy' if args.greedy else 'sampled'} "
            f"policy, seed {res['seed']}): mean return {res['mean']:.1f} ± {res['se']:.1f} (SE) "
            f"over {res['episodes']} episodes, min {res['min']:g}, max {res['max']:g}; {verdict}"
        )
    return 0 if res["threshold"] is None or res["solved"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m expectax.rl.cli``: the same as ``expectax rl``."""
    import sys

    from expectax.cli import main as expectax_main

    return expectax_main(["rl", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
