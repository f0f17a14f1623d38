"""One habit for every ``expectax`` command: a usage error is one line on stderr, exit status 2,
with a "did you mean" for a misspelt flag or choice (``expectax.cliutil``).

Only parsing runs here (no training): each case fails before any work starts.
"""

import re

import pytest

from expectax import cli, cliutil, runio

# command -> (a misspelt flag and its suggestion, a bad choice and its suggestion)
CASES = {
    "compare": (["--num-smaples", "8"], "--num-samples", ["--estimator", "pathwis"], "pathwise"),
    "blr": (["--stpes", "10"], "--steps", ["--estimator", "pathwyse"], "pathwise"),
    "vae": (["--estimator", "rloo", "--latnets", "4"], "--latents", None, None),
    "svi": (["--num-particle", "2"], "--num-particles", ["--elbo", "rlo"], "rloo"),
    "rl": (["--episdoes", "5"], "--episodes", ["--baseline", "critc"], "critic"),
    "rl-seq": (["--varaint", "rloo"], "--variant", ["--variant", "rlooo"], "rloo"),
}
CASES["vae"] = (*CASES["vae"][:2], ["--estimator", "disarmm"], "disarm")


def _one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"expectax {command}: error: "), err
    assert "usage:" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("command", list(CASES))
def test_misspelt_flag_is_one_line_with_a_suggestion(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flag_argv, flag, _, _ = CASES[command]
    assert cli.main([command, *flag_argv]) == 2
    err = _one_line_error(capsys, command)
    bad = next(a for a in flag_argv if a.startswith("--") and a != "--estimator")
    assert f"unrecognized argument {bad}; did you mean {flag}?" in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command", list(CASES))
def test_bad_choice_is_one_line_with_a_suggestion(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, _, choice_argv, suggestion = CASES[command]
    assert cli.main([command, *choice_argv]) == 2
    err = _one_line_error(capsys, command)
    assert f"invalid choice {choice_argv[-1]!r}; choose from" in err
    assert f"did you mean {suggestion!r}?" in err
    assert not any(tmp_path.iterdir())


def test_the_flag_is_blamed_not_the_value_after_it(capsys):
    assert cli.main(["rl", "--episdoes", "5"]) == 2
    err = _one_line_error(capsys, "rl")
    assert "--episdoes" in err and "invalid choice" not in err


def test_unknown_command_suggests_one(capsys):
    assert cli.main(["blrr"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'blr'?" in err


def test_out_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("mine")
    for command in ("vae", "blr", "svi"):
        assert cli.main([command, "--out", str(f)]) == 2
        err = _one_line_error(capsys, command)
        assert "is an existing file; give a directory" in err
    assert f.read_text() == "mine"


@pytest.mark.parametrize("command", list(CASES))
def test_every_flag_has_help(command):
    parser, _ = cli._command_parser(command)
    for action in parser._actions:
        if action.option_strings and action.help is not None:
            assert action.help.strip(), (command, action.option_strings)
        if action.option_strings and action.dest != "throttle":  # a hidden test hook
            assert action.help, (command, action.option_strings)


def test_default_out_follows_one_scheme():
    outs = {c: cli._command_parser(c)[0].get_default("out") for c in CASES}
    assert outs == {
        "compare": "runs/compare-paper",
        "blr": "runs/blr",
        "vae": "runs/vae",
        "svi": "runs/svi",
        "rl": "runs/rl-ENV-sSEED",
        "rl-seq": "runs/rl-seq",
    }


def test_rl_seq_warmup_default_fits_short_runs():
    from expectax.rl import seq_cli

    assert seq_cli.default_warmup(40) == 4 and seq_cli.default_warmup(600) == 50
    parser, _ = cli._command_parser("rl-seq")
    assert parser.parse_args(["--steps", "40"]).warmup is None  # resolved by run()
    assert "steps // 10" in parser.format_help()


def test_without_the_apps_extra_one_line_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_missing_apps", lambda: ["rich", "gymnasium"])
    assert cli.main(["blr"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert 'pip install "expectax[apps]"' in err and 'pip install ".[apps]"' in err


def test_interrupt_says_what_it_kept_and_leaves_no_empty_folder(tmp_path, capsys):
    empty, kept = tmp_path / "a" / "b", tmp_path / "kept"

    def interrupted_before_writing(args):
        runio.prepare_out(empty)
        raise KeyboardInterrupt

    def interrupted_after_writing(args):
        out = runio.prepare_out(kept)
        runio.write_csv(out / "log.csv", [{"step": 1}])
        raise KeyboardInterrupt

    assert cliutil.run_command("expectax x", interrupted_before_writing, None) == 130
    err = capsys.readouterr().err
    assert err == "expectax x: interrupted; nothing was written\n"
    assert not (tmp_path / "a").exists()
    assert cliutil.run_command("expectax x", interrupted_after_writing, None) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"kept 1 file\(s\) in .*kept \(log.csv\)", err)


def test_plain_progress_lines_when_not_a_terminal(capsys):
    from rich.console import Console

    console = Console(stderr=True, force_terminal=False)
    with runio.progress(console=console) as bar:
        task = bar.add_task("rloo seed 0", total=3)
        bar.advance(task, 3)
    err = capsys.readouterr().err
    assert "rloo seed 0: compiling, then 3 steps" in err
    assert "rloo seed 0: 3/3 steps" in err
