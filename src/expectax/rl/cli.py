"""``expectax rl``: train REINFORCE on a Gymnasium environment (or the pure-JAX CartPole).

Every hyperparameter is a flag; the defaults solve CartPole-v1. Also runnable as
``python -m expectax.rl.cli``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

__all__ = ["configure_parser", "main", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``expectax rl`` flags to ``parser``."""
    from expectax.rl.train import BASELINES, Config

    d = Config()
    parser.add_argument("--env", default=d.env_id, help="Gymnasium environment id")
    parser.add_argument(
        "--backend",
        choices=("auto", "gymnasium", "jax"),
        default=d.backend,
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
        "--hidden", type=int, nargs="+", default=list(d.hidden), help="hidden layer sizes"
    )
    parser.add_argument(
        "--input-gain",
        type=float,
        default=d.input_gain,
        help="scale of the first layer's initial weights (LeCun-normal × gain)",
    )
    parser.add_argument("--episodes", type=int, default=d.episodes, help="training episodes")
    parser.add_argument(
        "--batch-episodes", type=int, default=d.batch_episodes, help="episodes per update"
    )
    parser.add_argument("--lr", type=float, default=d.learning_rate, help="Adam learning rate")
    parser.add_argument("--gamma", type=float, default=d.gamma, help="discount")
    parser.add_argument("--baseline", choices=BASELINES, default=d.baseline)
    parser.add_argument(
        "--normalize-advantages",
        action=argparse.BooleanOptionalAction,
        default=d.normalize_advantages,
        help="standardise advantages over each batch",
    )
    parser.add_argument("--entropy-coef", type=float, default=d.entropy_coef)
    parser.add_argument("--value-coef", type=float, default=d.value_coef, help="critic loss weight")
    parser.add_argument(
        "--eval-every", type=int, default=d.eval_every, help="evaluate every N batches (0: never)"
    )
    parser.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    parser.add_argument(
        "--solve-threshold",
        type=float,
        default=None,
        help="mean evaluation return that counts as solved (default: the env's reward_threshold)",
    )
    parser.add_argument(
        "--stop-when-solved",
        action=argparse.BooleanOptionalAction,
        default=d.stop_when_solved,
        help="stop training once an evaluation reaches the threshold",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory for checkpoint.npz, log.csv, curve.png (default runs/rl-ENV-sSEED)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.npz if it exists"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=1, help="save a checkpoint every N batches"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--throttle", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``expectax rl`` with parsed ``args``; returns the exit code (130 after Ctrl-C)."""
    from expectax.rl.train import Config, train

    config = Config(
        env_id=args.env,
        backend=args.backend,
        policy=args.policy,
        hidden=tuple(args.hidden),
        input_gain=args.input_gain,
        episodes=args.episodes,
        batch_episodes=args.batch_episodes,
        learning_rate=args.lr,
        gamma=args.gamma,
        baseline=args.baseline,
        normalize_advantages=args.normalize_advantages,
        entropy_coef=args.entropy_coef,
        value_coef=args.value_coef,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        solve_threshold=args.solve_threshold,
        stop_when_solved=args.stop_when_solved,
        seed=args.seed,
    )
    out = args.out if args.out is not None else Path("runs") / f"rl-{args.env}-s{args.seed}"
    # Ctrl-C arrives as KeyboardInterrupt (restore Python's handler in case a host changed it);
    # train() saves a checkpoint of the last completed batch before returning.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = train(
            config,
            out,
            resume=args.resume,
            progress=not args.quiet,
            checkpoint_every=args.checkpoint_every,
            throttle=args.throttle,
        )
    except ValueError as err:
        print(f"expectax rl: error: {err}", file=sys.stderr)
        return 2
    hist = result["history"]
    if result["interrupted"]:
        print(
            f"interrupted after {int(hist['episodes'][-1]) if hist['episodes'] else 0} episodes; "
            f"checkpoint saved to {out / 'checkpoint.npz'} (continue with --resume)",
            file=sys.stderr,
        )
        return 130
    ets = result["episodes_to_solve"]
    last_eval = [v for v in hist["eval_return"] if v == v]
    print(
        f"{config.env_id}: {int(hist['episodes'][-1]) if hist['episodes'] else 0} episodes in "
        f"{result['wall_time']:.1f}s; last evaluation "
        f"{last_eval[-1] if last_eval else float('nan'):.1f}; "
        + (f"solved after {ets} episodes" if ets is not None else "not solved")
        + f"; outputs in {out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m expectax.rl.cli``."""
    parser = configure_parser(argparse.ArgumentParser(prog="expectax rl", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
