"""What an imaging run leaves in ``--out``: another kind of run refused or cleared, never
mixed; idle MPI ranks named; images that state their quantity."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from devito_uq.apps.imaging.outputs import RUN_FILES, check_run_kind
from devito_uq.apps.imaging.simulate import idle_ranks
from devito_uq.errors import DevitoUQWarning, InvalidArgumentError


def test_another_kind_of_run_is_refused_or_cleared(tmp_path):
    out = str(tmp_path)
    (tmp_path / "shots.sgy").write_bytes(b"input")  # inputs are never touched
    check_run_kind(out, "born", overwrite=False)
    assert json.loads((tmp_path / "run.json").read_text()) == {"kind": "born"}
    for name in ("velocity_mean.sgy", "posterior_mean.sgy", "map.pt"):
        (tmp_path / name).write_bytes(b"born output")
    check_run_kind(out, "born", overwrite=False)  # the same kind: a rerun or --resume
    with pytest.raises(
        InvalidArgumentError, match=r"holds the outputs of a born run \(run.json, map.pt.*fwi"
    ):
        check_run_kind(out, "fwi", overwrite=False)
    assert (tmp_path / "velocity_mean.sgy").exists()
    check_run_kind(out, "fwi", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "shots.sgy"]
    assert json.loads((tmp_path / "run.json").read_text()) == {"kind": "fwi"}


def test_kind_of_an_older_run_from_its_summary(tmp_path):
    summary = {"config": {"problem": "born", "amortized": "amortized.pt"}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(InvalidArgumentError, match="outputs of an amortized run"):
        check_run_kind(str(tmp_path), "born", overwrite=False)
    (tmp_path / "summary.json").write_text("{not json")  # a kind nothing says: kept
    check_run_kind(str(tmp_path), "born", overwrite=False)
    assert json.loads((tmp_path / "run.json").read_text()) == {"kind": "born"}
    assert "summary.json" in RUN_FILES and "shots.sgy" not in RUN_FILES


def _Comm(rank, size):
    """The rank and size of an MPI communicator, without MPI (nothing is reduced)."""
    return SimpleNamespace(Get_rank=lambda: rank, Get_size=lambda: size, Allreduce=lambda *a: None)


def test_idle_ranks_are_named_in_one_line():
    with pytest.warns(DevitoUQWarning, match=r"^4 MPI ranks for 2 shots: ranks 2, 3 have no shot"):
        assert idle_ranks(2, _Comm(0, 4)) == [2, 3]
    with pytest.warns(DevitoUQWarning, match=r"3 MPI ranks for 2 shots: rank 2 has no shot"):
        idle_ranks(2, _Comm(0, 3))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert idle_ranks(2, _Comm(1, 4)) == [2, 3]  # rank 0 says it, once
        assert idle_ranks(4, _Comm(0, 4)) == [] and idle_ranks(3, None) == []


def test_every_output_image_states_a_quantity_that_fits(tmp_path):
    """The text header of each posterior image names the statistic, the unknown and unit."""
    from devito_uq.apps.imaging.outputs import QUANTITIES, UNKNOWNS
    from devito_uq.io import check_image, image_quantity, write_image

    for unknown in UNKNOWNS.values():
        for statistic in QUANTITIES.values():
            check_image((2, 2), (1.0, 1.0), quantity=f"{statistic} {unknown}")
    path = write_image(tmp_path / "m.sgy", [[1.0, 2.0], [3.0, 4.0]], (50.0, 50.0), quantity="")
    assert image_quantity(path) is None


def test_simulate_refuses_what_segy_cannot_hold_before_any_solve(tmp_path, capsys):
    """A sample interval SEG-Y cannot store is refused by the config, not after the solves."""
    from devito_uq.apps.imaging import SimulateConfig
    from devito_uq.cli import main

    with pytest.raises(InvalidArgumentError, match=r"data_dt=0.0005 ms must be a whole number"):
        SimulateConfig(data_dt=0.0005).validate()
    assert main(["simulate", "--out", str(tmp_path / "s"), "--data-dt", "1.0005"]) == 2
    assert "data_dt=1.0005 ms must be a whole number of µs" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
