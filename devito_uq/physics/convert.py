"""Conversions between the torch layer and the solvers, shared by every physics.

The solvers run on host numpy arrays; the torch modules take and return tensors on
any device. Here, once for every physics:

* :func:`to_numpy` / :func:`to_tensor` — a tensor as a host array of the solver's
  dtype, and a host result back as a tensor on the caller's device;
* :class:`DataAxis` — solver traces to data traces for one call of a shot-record
  operator: the resampling ``R`` from the solver's time axis to the survey's data axis
  (:mod:`devito_uq.physics.resample`) and the live-trace mask, with the exact adjoint
  (``Rᵀ``, the same mask) for the backward pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["to_numpy", "to_tensor", "DataAxis"]


def to_numpy(x: torch.Tensor, dtype: type) -> np.ndarray:
    """``x`` as a host numpy array of ``dtype`` (detached; no copy when already one).

    Parameters
    ----------
    x : torch.Tensor
        Any shape, any device.
    dtype : numpy floating type
        The solver's dtype.

    Returns
    -------
    numpy.ndarray
        The shape of ``x``; may share memory with a CPU ``x``.
    """
    return x.detach().to("cpu").numpy().astype(dtype, copy=False)


def to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host result ``a`` as a tensor on ``device`` (shares memory on the CPU)."""
    return torch.from_numpy(a).to(device=device)


class DataAxis:
    """Solver → data traces of one call: resampling ``R`` and the per-trace mask.

    Parameters
    ----------
    survey : ~devito_uq.physics.survey.Survey
        Its :meth:`~devito_uq.physics.survey.Survey.resampling` (``None``: the axes
        coincide), :meth:`~devito_uq.physics.survey.Survey.mask`, receiver counts and
        ``nt_data``.
    shots : list of int
        The shots of the call, in output order.
    dtype : numpy floating type
        The solver's dtype (``R`` is cast once).
    """

    def __init__(self, survey: Any, shots: list[int], dtype: type) -> None:
        r = survey.resampling()
        self.matrix = None if r is None else r.astype(dtype)
        mask = survey.mask(shots)
        self.mask = None if mask.all() else mask  # None: nothing to zero
        self.nrec = [survey.nreceivers[s] for s in shots]
        self.nt = survey.nt_data

    def to_data(self, traces: np.ndarray, i: int) -> np.ndarray:
        """Solver traces ``[nt, nrec_i]`` of the i-th selected shot → data ``[nt_data, nrec_i]``."""
        out = traces if self.matrix is None else self.matrix @ traces
        if self.mask is not None:
            out = out * self.mask[i, : out.shape[1]]
        return out

    def to_solver(self, grad: np.ndarray, i: int) -> np.ndarray:
        """Adjoint of :meth:`to_data`: data residual ``[nt_data, max_rec]`` → ``[nt, nrec_i]``."""
        g = grad[:, : self.nrec[i]]
        if self.mask is not None:
            g = g * self.mask[i, : self.nrec[i]]
        if self.matrix is not None:
            g = self.matrix.T @ g
        return np.ascontiguousarray(g)
