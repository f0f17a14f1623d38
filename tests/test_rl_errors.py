"""Catalogue of `expectax rl` mistakes: each is one line on stderr, exit status 2, no traceback,
no unsafe advice; NaN/inf and a gradient stuck at zero stop training with a clear error."""

import dataclasses

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectax.rl import TrainingError, load_policy
from expectax.rl.cli import main
from expectax.rl.train import Config, save_checkpoint, train

SMALL = dict(episodes=8, batch_episodes=4, hidden=(8,))
SMALL_ARGS = ["--episodes", "8", "--batch-episodes", "4", "--hidden", "8", "--quiet"]


class _ConstEnv(gym.Env):
    """Every episode lasts 3 steps with reward ``R``: all returns equal, every advantage 0."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    R = 1.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), self.R, self.t >= 3, False, {}


class _HugeEnv(_ConstEnv):
    R = 3e38  # finite, but the returns overflow float32: the loss is inf

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return np.full(2, float(action), np.float32), r, self.t >= 3 + int(action), trunc, info


gym.register("ExpectaxTestConst-v0", entry_point=_ConstEnv, max_episode_steps=10)
gym.register("ExpectaxTestHuge-v0", entry_point=_HugeEnv, max_episode_steps=10)


def _cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    return code, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(Config(**SMALL), out, progress=False)
    return out


def _truncated(tmp_path, trained):
    d = tmp_path / "truncated"
    d.mkdir()
    data = (trained / "checkpoint.npz").read_bytes()
    (d / "checkpoint.npz").write_bytes(data[: len(data) // 2])
    return d


def _pickled(tmp_path, trained):
    d = tmp_path / "pickled"
    d.mkdir()
    with open(d / "checkpoint.npz", "wb") as fh:
        np.save(fh, np.array([object()], dtype=object), allow_pickle=True)
    return d


def _garbage(tmp_path, trained):
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "checkpoint.npz").write_text("not a checkpoint")
    return d


def _nan(tmp_path, trained):
    d = tmp_path / "nan"
    d.mkdir()
    res = train(Config(**SMALL), d, progress=False, overwrite=True)
    state = res["state"]
    bad = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan), state.params)
    save_checkpoint(
        d / "checkpoint.npz", state._replace(params=bad), res["history"], Config(**SMALL)
    )
    return d


def _old_version(tmp_path, trained):
    import json

    d = tmp_path / "old"
    d.mkdir()
    with np.load(trained / "checkpoint.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    cfg = json.loads(str(arrays["config"]))
    del cfg["skip_zero_grad_steps"]
    arrays["config"] = np.array(json.dumps(cfg))
    np.savez(d / "checkpoint.npz", **arrays)
    return d


CHECKPOINTS = [
    (_old_version, r"written by an older version of expectax rl \(it has no skip_zero_grad"),
    (_truncated, r"cannot be read \(BadZipFile\): it is truncated, corrupt.*Delete it"),
    (_pickled, r"cannot be read \(not a plain-array .npz; pickled data is never loaded\)"),
    (_garbage, r"cannot be read .*truncated, corrupt or not an expectax rl checkpoint"),
    (_nan, r"holds NaN or inf parameters: it cannot be resumed or evaluated.*smaller --lr"),
]


@pytest.mark.parametrize("make,match", CHECKPOINTS, ids=lambda x: getattr(x, "__name__", ""))
def test_bad_checkpoints_are_one_line_errors(tmp_path, trained, capsys, make, match):
    d = make(tmp_path, trained)
    for argv in (["evaluate", "--checkpoint", str(d)], [*SMALL_ARGS, "--out", str(d), "--resume"]):
        code, err = _cli(argv, capsys)
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "allow_pickle" not in err and "unsafe" not in err, err  # no unsafe advice
        assert pytest.importorskip("re").search(match, err), err
    with pytest.raises(ValueError, match=match):
        load_policy(d)


CLI_MISTAKES = [
    (["--lr", "nan"], r"argument --lr: must be positive and finite, got 'nan'"),
    (["--lr", "inf"], r"argument --lr: must be positive and finite, got 'inf'"),
    (["--lr", "-0.1"], r"argument --lr: must be positive"),
    (["--hidden", "0"], r"argument --hidden: must be positive"),
    (["--hidden", "-4"], r"argument --hidden: must be positive"),
    (["--checkpoint-every", "0"], r"argument --checkpoint-every: must be positive"),
    (["--episodes", "-3"], r"argument --episodes: must be positive"),
    (["--batch-episodes", "0"], r"argument --batch-episodes: must be positive"),
    (["--eval-episodes", "0"], r"argument --eval-episodes: must be positive"),
    (["--eval-every", "-1"], r"argument --eval-every: must be ≥ 0"),
    (["--confirm-episodes", "20"], r"confirm_episodes must be ≥ 100"),
    (["--gamma", "nan"], r"argument --gamma: must be finite"),
    (["--gamma", "1.5"], r"gamma must be in \[0, 1\]"),
    (["--seed", "4294967296"], r"argument --seed: must satisfy 0 <= seed < 2\*\*32"),
    (["--seed", "-1"], r"argument --seed: must satisfy 0 <= seed < 2\*\*32"),
    (["--batch-episodes", "1"], r"batch_episodes must be ≥ 2 with the leave-one-out"),
    (["--episodes", "4", "--batch-episodes", "8"], r"episodes \(4\) must be at least"),
    (["--env", "CartPole-v9"], r"unknown environment id 'CartPole-v9'.*CartPole-v1"),
    (["--env", "Acrobot-v1", "--backend", "jax"], r"backend 'jax' implements only CartPole"),
    (["--greedy"], r"--checkpoint and --greedy belong to `expectax rl evaluate`"),
    (["evaluate"], r"evaluate needs --checkpoint DIR"),
    (["evaluate", "--checkpoint", "/nonexistent/run"], r"no checkpoint at .*pass the --out"),
]


@pytest.mark.parametrize(
    "argv,match", CLI_MISTAKES, ids=lambda x: " ".join(x) if isinstance(x, list) else ""
)
def test_cli_mistakes_are_one_line_errors(tmp_path, capsys, argv, match):
    code, err = _cli([*SMALL_ARGS, "--out", str(tmp_path / "o"), *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert pytest.importorskip("re").search(match, err), err
    assert not (tmp_path / "o" / "checkpoint.npz").exists()  # refused before training


def test_out_is_checked_before_training(tmp_path, trained, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _cli([*SMALL_ARGS, "--out", str(blocker)], capsys)
    assert code == 2 and "is an existing file; give a directory" in err
    code, err = _cli([*SMALL_ARGS, "--out", str(blocker / "sub")], capsys)
    assert code == 2 and "is not a writable directory" in err and err.count("\n") == 1
    # a used --out: refused without --resume/--overwrite (the run is untouched)
    before = (trained / "checkpoint.npz").read_bytes()
    code, err = _cli([*SMALL_ARGS, "--out", str(trained)], capsys)
    assert code == 2 and "already holds an earlier run" in err and "--resume" in err
    assert (trained / "checkpoint.npz").read_bytes() == before
    with pytest.raises(ValueError, match="already holds an earlier run"):
        train(Config(**SMALL), trained, progress=False)


def test_overwrite_replaces_a_run(tmp_path, capsys):
    out = tmp_path / "o"
    assert _cli([*SMALL_ARGS, "--out", str(out)], capsys)[0] == 1  # ran, not solved
    code, err = _cli([*SMALL_ARGS, "--out", str(out), "--overwrite", "--seed", "7"], capsys)
    assert code == 1, err
    assert '"seed": 7' in (out / "summary.json").read_text()


def test_non_finite_loss_stops_training(tmp_path):
    with pytest.raises(TrainingError, match=r"training diverged at batch 1: the loss became NaN"):
        train(Config(env_id="ExpectaxTestHuge-v0", gamma=1.0, **SMALL), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.npz").exists()  # nothing non-finite was saved


def test_zero_gradient_for_many_batches_stops_training(tmp_path, capsys):
    cfg = Config(env_id="ExpectaxTestConst-v0", max_zero_grad_batches=3, **dict(SMALL, episodes=40))
    with pytest.raises(TrainingError, match=r"exactly zero for 3 batches in a row.*same return"):
        train(cfg, None, progress=False)
    for norm in ("--normalize-advantages", "--no-normalize-advantages"):
        argv = ["--env", "ExpectaxTestConst-v0", "--max-zero-grad-batches", "3", norm]
        code, err = _cli(
            [*SMALL_ARGS, "--episodes", "40", "--out", str(tmp_path / norm), *argv], capsys
        )
        assert code == 2 and "every advantage is 0" in err and err.count("\n") == 1, err


def test_config_checks_name_the_field():
    for field, value, match in [
        ("learning_rate", float("nan"), "learning_rate must be a finite number.*--lr"),
        ("learning_rate", float("inf"), "learning_rate must be a finite number"),
        ("hidden", (0,), r"hidden sizes must be positive integers"),
        ("hidden", (), r"hidden sizes must be positive integers"),
        ("seed", 2**32, r"seed must satisfy 0 <= seed < 2\*\*32"),
        ("eval_every", -1, "eval_every must be ≥ 0"),
        ("lr_final_fraction", 2.0, r"lr_final_fraction must be in \[0, 1\]"),
        ("adam_b1", 1.0, r"adam_b1 must be in \[0, 1\)"),
        ("adam_eps", 0.0, "adam_eps must be a positive finite number"),
        ("max_grad_norm", -1.0, r"max_grad_norm must be a positive finite number \(or None"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(Config(), **{field: value}).validate()
    with pytest.raises(ValueError, match="checkpoint_every must be an integer ≥ 1"):
        train(Config(**SMALL), None, progress=False, checkpoint_every=0)
