"""Sizes a user types (issue 22): every count is checked before any work, in the
configs' ``validate()`` (the CLI exits 2 with one line naming the value, nothing
written); memory-bound sizes say the bytes they imply."""

from __future__ import annotations

import re

import pytest

from devito_uq.cli import main
from devito_uq.errors import InsufficientMemoryError, InvalidArgumentError
from devito_uq.validation import MAX_COUNT, check_count, check_grid

BIG = 10**9

# (command words and options, option, value, what the message must say); the sizes
# refused for memory are petabytes, so that no machine running the tests accepts them.
CASES = [
    (["simulate"], "--nshots", BIG, f"nshots={BIG} must be an integer <= {MAX_COUNT}"),
    (["simulate"], "--nreceivers", BIG, f"nreceivers={BIG} must be"),
    (["simulate", "--nreceivers", "10000000"], "--nshots", 10**7, r"shot records \(nshots="),
    (["simulate"], "--spacing", 0.001, r"grid of 1200041 x 600041 points.*spacing=0.001 m"),
    (["simulate"], "--data-dt", 1e-9, r"shot records.*data_dt=1e-09 ms"),
    (["avp"], "--n-angles", BIG, f"n_angles={BIG} must be"),
    (["avp", "--batch-size", "10000000"], "--n-angles", 10**7, r"AVP gathers of batch_size="),
    (["avp"], "--batch-size", BIG, f"batch_size={BIG} must be"),
    (["avp"], "--n-samples", BIG, f"n_samples={BIG} must be"),
    (["avp"], "--flow-hidden", BIG, f"flow_hidden={BIG} must be"),
    (["calibrate"], "--n-truths", BIG, f"n_truths={BIG} must be"),
    (["calibrate"], "--n-samples", BIG, f"n_samples={BIG} must be"),
    (["invert"], "--batch-size", BIG, f"batch_size={BIG} must be"),
    (["invert"], "--n-samples", BIG, f"n_samples={BIG} must be"),
    (["invert"], "--flow-hidden", BIG, f"flow_hidden={BIG} must be"),
    (["invert"], "--flow-hidden", 10**6, r"flow's conditioners \(flow_hidden=1000000"),
    (["invert"], "--flow-levels", 40, "flow_levels=40 must be an integer <= 16"),
    (["summarize"], "--n-samples", BIG, f"n_samples={BIG} must be"),
    (["amortize", "train"], "--n-train", BIG, f"n_train={BIG} must be"),
    (["amortize", "simulate"], "--shard-size", BIG, f"shard_size={BIG} must be"),
    (["amortize", "train"], "--flow-hidden", BIG, f"flow_hidden={BIG} must be"),
    (["amortize", "train"], "--flow-hidden", 10**6, r"flow's conditioners \(flow_hidden="),
    (["amortize", "study"], "--n-truths", BIG, f"n_truths={BIG} must be"),
    (["amortize", "train"], "--batch-size", BIG, f"batch_size={BIG} must be"),
]


@pytest.mark.parametrize(("words", "option", "value", "match"), CASES)
def test_cli_refuses_sizes_before_any_work(tmp_path, capsys, words, option, value, match):
    out = tmp_path / "out"
    assert main([*words, option, str(value), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("devito-uq: error:"), err
    assert re.search(match, err[0]), err[0]
    assert not out.exists()


def test_amortize_imaging_grid_is_checked(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["amortize", "train", "--problem", "imaging", "--spacing", "0.001"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    assert "grid of" in capsys.readouterr().err and not out.exists()


def test_check_count_and_grid():
    assert check_count("n", 3) == 3
    assert check_count("n", 0, minimum=0) == 0
    with pytest.raises(InvalidArgumentError, match="n=0 must be an integer >= 1"):
        check_count("n", 0)
    with pytest.raises(InvalidArgumentError, match="n=11 must be an integer <= 10"):
        check_count("n", 11, maximum=10)
    with pytest.raises(InvalidArgumentError, match="must be an integer"):
        check_count("n", 2.5)
    assert check_grid((100.0, 50.0), 10.0) == (11, 6)
    assert check_grid((100.0, 50.0), 10.0, pad=2) == (15, 10)
    with pytest.raises(InsufficientMemoryError, match=r"grid of 11 x 6 points.*792 B"):
        check_grid((100.0, 50.0), 10.0, available=100)
    with pytest.raises(InsufficientMemoryError, match="reduce the size"):
        check_grid((1e9, 1e9), 1e-6)
    with pytest.raises(InvalidArgumentError, match="spacing=0.0 must be finite and positive"):
        check_grid((1.0, 1.0), 0.0)
