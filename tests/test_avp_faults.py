"""Faults and hostile input of the AVP application (issue 9): symbolic links planted in the
output folder, truncated or corrupt checkpoints on --resume, a resume under another
configuration, option combinations that used to fail only after MAP, MALA and VI."""

from __future__ import annotations

import json
import shutil

import pytest

import devito_uq.apps.avp.run as avp_run
from devito_uq.apps.avp import AVPConfig, run_avp
from devito_uq.cli import main
from devito_uq.errors import CheckpointError, InvalidArgumentError
from devito_uq.io import load_checkpoint

OUTPUTS = (
    "summary.json",
    "models.png",
    "std.png",
    "interval.png",
    "samples.png",
    "data_fit.png",
    "loss.png",
    "posterior_samples.pt",
    "map_mala.pt",
    "vi_checkpoint.pt",
)
TINY = dict(
    iterations=3,
    map_iterations=2,
    mala_steps=3,
    mala_burn_in=1,
    mala_thin=1,
    mala_chains=2,
    n_samples=8,
    refine_steps=4,
    refine_chains=2,
    refine_burn_in=1,
)
CLI_TINY = ["--iterations", "3", "--map-iterations", "2", "--mala-steps", "3"]
CLI_TINY += ["--mala-burn-in", "1", "--mala-thin", "1", "--mala-chains", "2", "--n-samples", "8"]
CLI_TINY += ["--refine-steps", "4", "--refine-chains", "2", "--refine-burn-in", "1"]


def _tiny(**kw) -> AVPConfig:
    return AVPConfig.short(**{**TINY, **kw})


@pytest.fixture
def no_work(monkeypatch):
    """Make any solve fail the test: refusals must come before the problem is built."""

    def forbidden(config):
        raise AssertionError("build_problem ran: the refusal came after work started")

    monkeypatch.setattr(avp_run, "build_problem", forbidden)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A run (figures included) into a folder where every output name is a symbolic link
    to a victim file outside it."""
    root = tmp_path_factory.mktemp("planted")
    out, victims = root / "out", root / "victims"
    out.mkdir()
    victims.mkdir()
    for name in OUTPUTS:
        (victims / name).write_text("victim")
        (out / name).symlink_to(victims / name)
    summary = run_avp(_tiny(), out, progress=False)
    return out, victims, summary


def test_planted_symlinks_are_never_written_through(planted_run):
    out, victims, summary = planted_run
    for name in OUTPUTS:
        assert (victims / name).read_text() == "victim", name
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert json.loads((out / "summary.json").read_text())["vi"] == summary["vi"]
    samples = load_checkpoint(out / "posterior_samples.pt", required=("vi", "mala", "map"))
    assert samples["vi"].shape == (8, 128)
    assert (out / "models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # no temporary file left


@pytest.mark.parametrize("name", ["map_mala.pt", "vi_checkpoint.pt"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_on_resume_is_one_line_exit_2(
    planted_run, tmp_path, capsys, no_work, name, damage
):
    out = tmp_path / "out"
    shutil.copytree(planted_run[0], out)
    path = out / name
    data = path.read_bytes()
    bad = data[: len(data) // 2] if damage == "truncate" else _flip(data, len(data) * 2 // 3)
    path.write_bytes(bad)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    status = main(["avp", "--out", str(out), "--resume", "--quiet", *CLI_TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("devito-uq: error: checkpoint "), err
    assert f"{name}' is corrupt" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched


def _flip(data: bytes, pos: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 0x10
    return bytes(out)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(lr=3e-3), r"vi_checkpoint\.pt.*it has lr=0.002, this run has lr=0.003"),
        (dict(lr_decay=0.9), r"vi_checkpoint\.pt.*it has lr_decay=0.5, this run has lr_decay=0.9"),
        (dict(seed=2), r"map_mala\.pt.*it has seed=1, this run has seed=2"),
        (dict(mala_chains=4), r"map_mala\.pt.*it has mala_chains=2, this run has mala_chains=4"),
    ],
)
def test_resume_under_another_configuration_refused_before_work(
    planted_run, tmp_path, no_work, change, message
):
    out = tmp_path / "out"
    shutil.copytree(planted_run[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CheckpointError, match=message + ".*run without resume"):
        run_avp(_tiny(**change), out, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(mala_chains=1, mala_steps=1), r"keeps 1 MALA draw\(s\); at least 2 are needed"),
        (dict(mala_chains=1, mala_steps=5, mala_thin=3), r"mala_thin=3\) keeps 1 MALA draw"),
        (dict(corners=(5.0, 30.0, 30.0, 60.0)), r"corners=.* must increase strictly"),
        (dict(corners=(5.0, 30.0, 50.0, 1200.0)), r"below the Nyquist frequency 1000 Hz"),
        (dict(dt=500.0), r"dt=500.0 ms must be smaller than t1=400.0 ms"),
        (
            dict(lr_decay=1e-300, lr_decay_every=1, iterations=10),
            r"final learning rate .* underflows to 0.0",
        ),
        (dict(extra={"f": object()}), r"extra=.* is not plain JSON data"),
        (dict(label=3), r"label=3 must be a string"),
        (dict(n_samples=10**12), r"n_samples=1000000000000 must be an integer <= 10000000"),
        (dict(mala_steps=10**12), r"2000000000000 kept MALA draws needs .* bytes\) but only"),
        (dict(flow_leaf=1), r"leaf_size=1 must be an integer >= 2"),
    ],
)
def test_option_combinations_refused_before_anything(tmp_path, no_work, change, message):
    out = tmp_path / "never"
    with pytest.raises(InvalidArgumentError, match=message):
        run_avp(_tiny(**change), out, progress=False)
    assert not out.exists()


def test_output_paths_that_are_not_what_they_should_be(tmp_path, no_work):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InvalidArgumentError, match=r"out='.*file' exists and is not a folder"):
        run_avp(_tiny(), afile, progress=False)
    out = tmp_path / "out"
    (out / "vi_checkpoint.pt").mkdir(parents=True)
    for resume in (False, True):
        with pytest.raises(CheckpointError, match=r"vi_checkpoint\.pt' is a folder"):
            run_avp(_tiny(), out, resume=resume, progress=False)
    assert (out / "vi_checkpoint.pt").is_dir() and afile.read_text() == "x"
