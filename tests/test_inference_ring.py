"""The seed's 2-D ring example (examples/toy2d_ring.py): target, metrics, short run."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "examples" / "toy2d_ring.py"


@pytest.fixture(scope="module")
def ring():
    spec = importlib.util.spec_from_file_location("toy2d_ring", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_target_is_the_specified_normalized_mixture(ring):
    c = ring.ring_centres(torch.float64)
    assert c.shape == (20, 2)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(20, dtype=torch.float64))
    angles = torch.rad2deg(torch.atan2(c[:, 1], c[:, 0])) % 360
    torch.testing.assert_close(angles, 15.0 * torch.arange(20, dtype=torch.float64))
    target = ring.RingTarget().double()
    # Normalized: the density integrates to 1 (midpoint rule on [-2, 2]²).
    n, half = 400, 2.0
    t = -half + (torch.arange(n, dtype=torch.float64) + 0.5) * (2 * half / n)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    mass = torch.exp(-target.negative_log(grid)).sum() * (2 * half / n) ** 2
    assert float(mass) == pytest.approx(1.0, abs=1e-4)
    # At a centre far from the others the density is ≈ one component's peak / 20.
    peak = 1 / (20 * 2 * math.pi * 0.025)
    assert float(torch.exp(-target.negative_log(c[9:10].double()))) > peak


def test_mode_fractions_of_exact_samples(ring):
    g = torch.Generator().manual_seed(0)
    k = torch.randint(20, (200000,), generator=g)
    x = ring.ring_centres()[k] + math.sqrt(0.025) * torch.randn(200000, 2, generator=g)
    fr = ring.mode_fractions(x)
    assert float(fr.sum()) == pytest.approx(1.0)
    assert ring.modes_covered(fr)
    # A sampler that misses one mode fails the check.
    assert not ring.modes_covered(ring.mode_fractions(x[k != 7]))


def test_short_run_covers_every_mode(ring, tmp_path):
    """500 iterations instead of 1500: still every mode and KL(q‖p) < 0.05 nats."""
    metrics = ring.main(
        [
            "--out",
            str(tmp_path),
            "--iterations",
            "500",
            "--chains",
            "200",
            "--mala-steps",
            "400",
            "--samples",
            "10000",
            "--quiet",
        ]
    )
    assert metrics["vi"]["all_modes_within_0.5_1.5"]
    assert metrics["vi"]["kl_q_p_nats"] < 0.05
    assert metrics["mala"]["all_modes_within_0.5_1.5"]
    assert (tmp_path / "ring.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "ring_metrics.json").read_text()) == json.loads(
        json.dumps(metrics)
    )
