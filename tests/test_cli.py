"""The devito-uq command (devito_uq.cli) and the application registry (devito_uq.apps)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from devito_uq.apps import commands
from devito_uq.apps.amortize import AmortizeConfig
from devito_uq.apps.avp import AVPCalibrationConfig, AVPConfig
from devito_uq.apps.imaging import (
    ImagingConfig,
    InfoConfig,
    InvertConfig,
    SimulateConfig,
    SummarizeConfig,
)
from devito_uq.cli import (
    ALTERNATE_RUNS,
    build_parser,
    config_overrides,
    load_config_file,
    main,
    resolve_config,
    run_target,
)
from devito_uq.errors import InvalidArgumentError


def test_every_app_command_is_registered():
    names = [c.name for c in commands()]
    assert names == [
        "amortize all", "amortize simulate", "amortize study", "amortize train",
        "avp", "calibrate", "demo", "imaging", "info", "invert", "simulate", "summarize"
    ]  # fmt: skip
    assert {c.config for c in commands()} == {
        AmortizeConfig,
        AVPConfig,
        AVPCalibrationConfig,
        ImagingConfig,
        InfoConfig,
        InvertConfig,
        SimulateConfig,
        SummarizeConfig,
    }


def test_imaging_options_and_positional_file(tmp_path):
    """Every imaging command has an option per field; ``info FILE`` fills its field; an
    unknown TOML key is an error naming it."""
    cfg = _resolve(["imaging", "--rank", "17", "--problem", "fwi"])
    assert cfg.rank == 17 and cfg.problem == "fwi" and cfg.data == "born"
    assert _resolve(["imaging", "--full"]).spacing == ImagingConfig.full().spacing
    assert _resolve(["info", "shots.sgy"]).segy == "shots.sgy"
    # The documented example holds every key, at the default schedule's values.
    example = Path(__file__).parent.parent / "examples" / "imaging_marmousi.toml"
    assert _resolve(["imaging", str(example)]) == ImagingConfig.short()
    path = tmp_path / "c.toml"
    path.write_text('problem = "fwi"\nflow_levels = 3\nbogus = 1\n')
    with pytest.raises(InvalidArgumentError, match="unknown key 'bogus'"):
        _resolve(["invert", str(path)])
    path.write_text('problem = "fwi"\nflow_levels = 3\n')
    assert _resolve(["invert", str(path), "--flow-levels", "2"]).flow_levels == 2


def test_options_are_generated_from_the_config_fields():
    """Each CLI field of AVPConfig is an option with its type and the field's help text."""
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["avp"]
    options = {a.dest: a for a in sub._actions}
    for f in dataclasses.fields(AVPConfig):
        if not f.metadata.get("cli", True):
            assert f.name not in options
            continue
        action = options[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert f.metadata["help"].replace("%", "%%") in action.help
    assert options["iterations"].type is int and options["lr"].type is float
    assert options["corners"].nargs == 4
    # The help shows both schedules where they differ.
    assert "short: 2000, full: 32768" in options["iterations"].help


def test_parsed_options_override_the_preset_only_where_given():
    args = build_parser().parse_args(
        ["demo", "--iterations", "12", "--corners", "4", "20", "40", "60", "--snr-db", "-3"]
    )
    assert args.out == "outputs/demo"
    over = config_overrides(args, AVPConfig)
    assert over == {"iterations": 12, "corners": (4.0, 20.0, 40.0, 60.0), "snr_db": -3.0}
    cfg = AVPConfig.short(**over).validate()
    assert cfg.lr == AVPConfig.short().lr and cfg.corners == (4.0, 20.0, 40.0, 60.0)


def test_cli_avp(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["avp", "--out", str(out), "--iterations", "3", "--mala-steps", "3"]
    argv += ["--mala-burn-in", "1", "--mala-thin", "1", "--mala-chains", "2", "--n-samples", "4"]
    argv += ["--no-figures", "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["iterations"] == 3 and summary["config"]["n_samples"] == 4
    assert summary["schedule"] == "short"
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1]).keys() >= {"relative_error", "targets"}
    assert not (out / "models.png").exists()


def test_cli_user_error_is_one_line_and_status_2(tmp_path):
    """Through the real entry point: no traceback, one line naming the value, exit 2."""
    cmd = [sys.executable, "-m", "devito_uq.cli", "avp", "--out", str(tmp_path)]
    run = subprocess.run(cmd + ["--iterations", "-1", "--quiet"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "devito-uq: error: iterations=-1 must be an integer >= 1"
    ]
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_cli_rejects_a_malformed_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--iterations", "many"])
    assert exc.value.code == 2
    assert "--iterations: invalid int value: 'many'" in capsys.readouterr().err


def test_cli_sets_the_thread_policy(tmp_path, capsys, monkeypatch):
    """--threads goes through configure_threads before any work; a bad count is a user error."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(["avp", "--out", str(tmp_path / "a"), "--threads", "0", "--quiet"]) == 2
    assert "threads=0 must be an integer >= 1" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        argv = ["avp", "--out", str(tmp_path / "b"), "--threads", "2", "--iterations", "1"]
        argv += ["--mala-steps", "1", "--mala-burn-in", "0", "--mala-thin", "1"]
        argv += ["--mala-chains", "2", "--n-samples", "2", "--map-iterations", "1"]
        assert main(argv + ["--no-figures", "--quiet"]) == 0
        assert torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)
        os.environ["OMP_NUM_THREADS"] = "1"


def test_invert_amortized_is_dispatched_to_the_amortize_app():
    """``invert --amortized PATH`` runs the amortize app's function, plain ``invert`` the
    imaging one; every alternate names a function that exists."""
    args = build_parser().parse_args(["invert", "--amortized", "run/amortized.pt"])
    cmd = args._command
    target = run_target(cmd, resolve_config(cmd, args))
    assert target == "devito_uq.apps.amortize.imaging_invert:invert_amortized"
    args = build_parser().parse_args(["invert"])
    assert run_target(cmd, resolve_config(cmd, args)) == cmd.run
    names = {c.name for c in commands()}
    for (name, field), target in ALTERNATE_RUNS.items():
        cmd = next(c for c in commands() if c.name == name)
        assert name in names and field in {f.name for f in dataclasses.fields(cmd.config)}
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_help_loads_no_solver_and_no_application_run_module():
    """``devito-uq --help`` builds the parser from the configs alone: neither Devito, nor
    matplotlib, nor any application's run module is imported."""
    code = (
        "import sys; from devito_uq.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in sys.modules if m == 'devito' or m == 'matplotlib' "
        "or m.endswith(('.run', '.problem', '.imaging_invert', '.scenarios'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- CONFIG files (TOML) -----------------------------------------------------------------------


def _resolve(argv):
    args = build_parser().parse_args(argv)
    return resolve_config(args._command, args)


def test_config_file_sets_fields_and_options_override_it(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        "# a comment\niterations = 30\nlr = 1  # an integer is a fine float\n"
        "corners = [4, 20, 40.5, 60]\nsnr_db = -3.0\ndtype = 'float64'\n"
    )
    cfg = _resolve(["avp", str(path), "--iterations", "12", "--mala-steps", "7"])
    assert cfg.iterations == 12  # the option wins over the file
    assert cfg.mala_steps == 7
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.corners == (4.0, 20.0, 40.5, 60.0) and isinstance(cfg.corners, tuple)
    assert cfg.snr_db == -3.0 and cfg.dtype == "float64"
    # Fields in neither keep the preset's value; --full picks the other preset.
    assert cfg.lr_decay == AVPConfig.short().lr_decay
    assert _resolve(["avp", str(path), "--full"]).lr_decay_every == AVPConfig.full().lr_decay_every
    assert _resolve(["avp", str(path), "--full"]).iterations == 30
    # Without a file, nothing changes: today's commands keep working.
    assert _resolve(["demo"]) == AVPConfig.short()
    assert _resolve(["avp", "--full"]) == AVPConfig.full()


@pytest.mark.parametrize(
    "text, match",
    [
        ("iterations = 3\nlearning_rate = 0.1\n", "unknown key 'learning_rate'"),
        ("label = 'x'\n", "unknown key 'label'"),  # not a CLI field
        ("[flow]\nsteps = 3\n", "unknown key 'flow'"),
        ("iterations = 'many'\n", "iterations='many' .* must be an integer"),
        ("iterations = 2.5\n", "iterations=2.5 .* must be an integer"),
        ("n_angles = true\n", "n_angles=True .* must be an integer"),
        ("lr = true\n", "lr=True .* must be a number"),
        ("dtype = 32\n", "dtype=32 .* must be a string"),
        ("corners = [5, 30, 50]\n", "corners=.* must be an array of 4 floats"),
        ("corners = [5, 30, 50, 'x']\n", "corners=.* must be an array of 4 floats"),
        ("iterations = \n", "is not valid TOML"),
    ],
)
def test_config_file_errors_name_the_key_and_the_file(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError, match=match) as exc:
        load_config_file(path, AVPConfig)
    assert str(path) in str(exc.value)


def test_config_file_errors_through_the_cli(tmp_path, capsys):
    """A bad file is a one-line user error (status 2) before anything runs or is written."""
    path = tmp_path / "bad.toml"
    path.write_text("n_truths = 3\nn_truth = 4\n")
    out = tmp_path / "out"
    assert main(["calibrate", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'n_truth'" in err[0] and str(path) in err[0]
    assert main(["calibrate", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # A valid file with an invalid value is refused by the config's own validation.
    path.write_text("n_truths = 1\n")
    assert main(["calibrate", str(path), "--out", str(out), "--quiet"]) == 2
    assert "n_truths=1 must be an integer >= 2" in capsys.readouterr().err
    assert not out.exists()


def _command_paths(parser, prefix=()):
    """Every command and sub-command of ``parser`` as argument lists."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, sub in action.choices.items():
            yield (*prefix, name)
            yield from _command_paths(sub, (*prefix, name))


def test_help_works_for_every_command_and_subcommand(capsys):
    """``--help`` (a ``%`` in a help text once crashed it) for the program and every command."""
    paths = list(_command_paths(build_parser()))
    assert ("amortize", "train") in paths and ("invert",) in paths
    assert len(paths) == len(commands()) + 1  # the "amortize" group itself
    for path in [(), *paths]:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        assert "usage: devito-uq" in capsys.readouterr().out, path


def test_warnings_print_as_one_line(monkeypatch, capsys):
    """A warning reaches the command-line user as one line: no category, no file path; a
    repeated message once; under MPI a DevitoUQWarning only from rank 0."""
    import warnings

    from devito_uq import cli
    from devito_uq.errors import SegyHeaderWarning, warning_printer

    def fake_run(cmd, args, comm):
        for _ in range(2):
            warnings.warn("the depth fields\n  disagree", SegyHeaderWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
        return {}

    monkeypatch.setattr(cli, "_run", fake_run)
    assert main(["info", "x.sgy"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "devito-uq: warning: the depth fields disagree",
        "devito-uq: warning: something else",
    ]
    show = warning_printer(rank=1)
    show("same on every rank", SegyHeaderWarning, "f.py", 1)
    show("only here", UserWarning, "f.py", 1)
    assert capsys.readouterr().err.splitlines() == ["devito-uq: warning (rank 1): only here"]
