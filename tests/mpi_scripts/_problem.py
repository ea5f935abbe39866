"""Small 2D acoustic problem shared by the MPI scripts and the tests that check them.

41×41 grid of 10 m, 10-point absorbing layer, 4th order, float64, 4 shots and 21
receivers over 400 ms: a Devito gradient costs a few ms per shot.
"""

from __future__ import annotations

import numpy as np
import torch

from devito_uq.inference import GaussianLikelihood
from devito_uq.physics import AcousticModel, AcousticModeling, Survey

NSHOTS = 4


def build(comm=None, shot_batch=None, seed=0):
    """``(likelihood, m0)``: the Gaussian likelihood of synthetic data and a start model."""
    shape = (41, 41)
    model = AcousticModel(shape, (10.0, 10.0), nbl=10, space_order=4, dtype=np.float64)
    x, z = np.meshgrid(np.arange(41), np.arange(41), indexing="ij")
    v = np.where(z > 20, 2.0, 1.5) + 0.3 * np.exp(-((x - 20) ** 2 + (z - 12) ** 2) / 20.0)
    dt = np.floor(1000 * model.critical_dt(float(v.max()))) / 1000
    survey = Survey.surface(model, nshots=NSHOTS, nreceivers=21, t1=400.0, f0_hz=15.0, dt=dt)
    F = AcousticModeling(model, survey)
    m_true = torch.tensor(1.0 / v**2, dtype=torch.float64)
    with torch.no_grad():
        d = F(m_true)
    m0 = torch.full_like(m_true, 1.0 / 1.6**2)
    lik = GaussianLikelihood(F, d, sigma=0.01, shot_batch=shot_batch, seed=seed, comm=comm)
    return lik, m0


def value_and_gradient(lik, m0, calls=1):
    """Per call: the ``[batch]`` likelihood of ``m0`` (batch 2: m0 and 1.02·m0) and its gradient."""
    values, grads = [], []
    for _ in range(calls):
        m = torch.stack([m0, 1.02 * m0]).requires_grad_(True)
        value = lik(m)
        value.sum().backward()
        values.append(value.detach().numpy())
        grads.append(m.grad.numpy())
    return np.stack(values), np.stack(grads)
