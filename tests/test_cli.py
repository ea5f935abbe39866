"""The devito-uq command (devito_uq.cli) and the application registry (devito_uq.apps)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from devito_uq.apps import commands
from devito_uq.apps.avp import AVPConfig
from devito_uq.cli import build_parser, config_overrides, main


def test_every_app_command_is_registered():
    names = [c.name for c in commands()]
    assert names == ["avp", "demo"]
    assert {c.config for c in commands()} == {AVPConfig}


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
    import torch

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
