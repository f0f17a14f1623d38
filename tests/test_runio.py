"""The shared run/output helper: atomic files, refusals, seeds, statistics, plots."""

import argparse
import io
import json
import math
import os
import re

import pytest
from rich.console import Console

from expectax import runio


def test_atomic_write_interrupt_leaves_old_file(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("old,complete\n")
    with pytest.raises(KeyboardInterrupt), runio.atomic_write(path) as fh:
        fh.write("new,partial")
        raise KeyboardInterrupt
    assert path.read_text() == "old,complete\n"
    assert sorted(os.listdir(tmp_path)) == ["summary.csv"]  # no temporary left behind
    with runio.atomic_write(path) as fh:
        fh.write("new\n")
    assert path.read_text() == "new\n"
    if os.name == "posix":  # the usual permissions, not mkstemp's 0600
        mask = os.umask(0)
        os.umask(mask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_write_interrupt_leaves_no_file(tmp_path):
    path = tmp_path / "curves.csv"
    rows = ({"step": i, "elbo": 1.0} if i < 3 else 1 / 0 for i in range(5))
    with pytest.raises(ZeroDivisionError):
        runio.write_csv(path, rows, columns=["step", "elbo"])
    assert not path.exists() and os.listdir(tmp_path) == []


def test_write_csv_and_json(tmp_path):
    rows = [{"seed": 0, "elbo": -67.46341234, "acc": float("nan")}, {"seed": 1, "elbo": -1.0}]
    runio.write_csv(tmp_path / "a.csv", rows, columns=["seed", "elbo", "acc"])
    assert (tmp_path / "a.csv").read_text().splitlines() == [
        "seed,elbo,acc",
        "0,-67.46341,nan",
        "1,-1,",
    ]
    runio.write_json(tmp_path / "a.json", {"rows": rows, "inf": float("inf")})
    back = json.loads((tmp_path / "a.json").read_text())  # strict JSON: no NaN/Infinity
    assert back["rows"][0]["acc"] is None and back["inf"] is None


def test_prepare_out_refusals(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(runio.OutputError, match="is an existing file; give a directory"):
        runio.prepare_out(f)
    out = runio.prepare_out(tmp_path / "new" / "dir", ["s.csv"])
    assert out.is_dir()
    (out / "s.csv").write_text("earlier run")
    with pytest.raises(runio.OutputError, match="already holds an earlier run .*--overwrite"):
        runio.prepare_out(out, ["s.csv", "t.csv"])
    assert runio.prepare_out(out, ["s.csv"], overwrite=True) == out
    assert (out / "s.csv").read_text() == "earlier run"  # checking never writes over it


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions")
def test_prepare_out_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(runio.OutputError, match="is not a writable directory"):
            runio.prepare_out(ro)
        with pytest.raises(runio.OutputError, match="is not a writable directory"):
            runio.prepare_out(ro / "sub")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("bad", [-1, 2**32, "x", 1.5, True])
def test_check_seed_refuses(bad):
    with pytest.raises(ValueError, match=r"--seed must"):
        runio.check_seed(bad)


def test_common_flags(capsys):
    p = argparse.ArgumentParser(prog="app")
    runio.add_common_flags(p, lr=1e-3, steps=10, num_samples=5, seeds=(0,))
    a = p.parse_args(["--seed", "0", "1", str(2**32 - 1), "--quiet", "--json"])
    assert a.seed == [0, 1, 2**32 - 1] and a.lr == 1e-3 and a.steps == 10 and a.quiet
    for argv, msg in [
        (["--seed", str(2**32)], "0 <= seed < 2\\*\\*32"),
        (["--lr", "nan"], "must be positive and finite"),
        (["--num-samples", "0"], "must be positive"),
    ]:
        with pytest.raises(SystemExit) as exc:
            p.parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("app: error:")
        assert re.search(msg, err), err


def test_mean_se():
    m, se = runio.mean_se([1.0, 2.0, 3.0, float("nan")])
    assert m == 2.0 and math.isclose(se, 1 / math.sqrt(3))
    assert math.isnan(runio.mean_se([1.0])[1])
    assert runio.format_mean_se([1.0, 2.0, 3.0], ".2f") == "2.00 ± 0.58"
    assert runio.format_mean_se([float("nan")]) == "-"


def test_progress_disabled_when_quiet_or_piped():
    piped = Console(file=io.StringIO())
    assert runio.progress(console=piped).disable
    tty = Console(file=io.StringIO(), force_terminal=True)
    assert not runio.progress(console=tty).disable
    assert runio.progress(console=tty, quiet=True).disable


def test_plot_limits_ignore_diverged_run(tmp_path):
    ok = ([0, 1, 2], [-70.0, -68.0, -67.5])
    bad = ([0, 1, 2], [-70.0, -1e12, float("nan")])
    lim = runio._limits({"ok": ok, "bad": bad}, log=False, zoom=0.0)
    assert -71 < lim[0] < -70 and -67.5 < lim[1] < -67
    path = runio.plot_panels(tmp_path / "c.png", [{"series": {"ok": ok, "bad": bad}}])
    assert path.read_bytes()[:4] == b"\x89PNG"
