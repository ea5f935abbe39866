r"""Gaussian data likelihood for any differentiable torch operator.

.. math::
    -\log p(d \mid m) = \frac{1}{2\sigma^2} \| d - F(m) \|^2 + \text{const}

With ``shot_batch = n`` out of ``N`` shots, each evaluation uses a random subset
``S`` of shots and the unbiased estimate

.. math::
    \frac{N}{n} \frac{1}{2\sigma^2} \sum_{i \in S} \| d_i - F_i(m) \|^2

(Welling & Teh, 2011; the seed talk's "stochastic gradient" slide).

With ``comm`` (an mpi4py communicator) the shots of each evaluation (all, or the
random subset, drawn identically on every rank from the same seed) are dealt
round-robin to the ranks (:mod:`devito_uq.parallel`); each rank solves only its
own, and the value and the model gradient are summed over ranks, so both are
identical on every rank and equal to the serial ones.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.parallel import (
    ShotDistribution,
    allreduce_value,
    rank_and_size,
    share_gradient,
)
from devito_uq.validation import check_finite, check_int, check_positive_scalar, check_scalar

__all__ = ["GaussianLikelihood", "RankSummedLikelihood", "rank_sum", "sigma_from_snr"]


def sigma_from_snr(data: torch.Tensor, snr_db: float, mask: torch.Tensor | None = None) -> float:
    r"""Noise standard deviation for a target signal-to-noise ratio in dB.

    .. math::
        \sigma^2 = \frac{\|d\|^2}{N_d \, 10^{\mathrm{SNR}/10}}

    with :math:`N_d` the number of data samples, i.e. the mean data power divided
    by the power ratio: white noise of this σ has ``10·log10(‖d‖² / E‖n‖²) = snr_db``.

    Parameters
    ----------
    data : torch.Tensor
        ``[*data_shape]`` the data, in data units.
    snr_db : float
        Target signal-to-noise ratio, dB.
    mask : torch.Tensor, optional
        Bool, broadcastable to ``data``, True where data were recorded: only the live
        samples count.

    Returns
    -------
    float
        σ, in data units.

    Raises
    ------
    InvalidArgumentError
        The (live) data are all zero, or ``snr_db`` is not a finite number.
    """
    snr_db = check_scalar("snr_db", snr_db)
    d = data.detach().double()
    if mask is None:
        power = float(torch.sum(d**2)) / d.numel()
    else:
        live = torch.broadcast_to(mask, d.shape)
        power = float(torch.sum(d[live] ** 2)) / max(int(live.sum()), 1)
    if power <= 0.0:
        raise InvalidArgumentError("cannot derive sigma from snr_db: the data are all zero")
    return math.sqrt(power / 10.0 ** (snr_db / 10.0))


def rank_sum(
    m: torch.Tensor, comm: Any, local: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    r"""Sum over MPI ranks of each rank's value :math:`\Phi_r(m)`, gradient summed too.

    Parameters
    ----------
    m : torch.Tensor
        ``[batch, *model_shape]`` models, the same on every rank.
    comm : mpi4py communicator or None
        The ranks to sum over (``None`` or one rank: serial, ``local(m)`` itself).
    local : callable or None
        ``local(m) -> [batch]``, this rank's part. ``None``: a rank with nothing to
        contribute (no shot), which still joins the collective sums.

    Returns
    -------
    torch.Tensor
        ``[batch]`` :math:`\sum_r \Phi_r(m)`, identical on every rank; its ``backward``
        gives every rank :math:`\sum_r \partial \Phi_r / \partial m`. Every rank must
        call it, and ``backward``, in the same order (collective calls).
    """
    m_local = share_gradient(m, comm)
    if local is None:
        # A zero that still depends on m: this rank joins the collective gradient sum.
        value = (m_local * 0).flatten(1).sum(1)
    else:
        value = local(m_local)
    return allreduce_value(value, comm)


class RankSummedLikelihood(nn.Module):
    """``Σ_ranks`` of each rank's likelihood of the shots it holds (:func:`rank_sum`).

    Parameters
    ----------
    local : nn.Module or None
        This rank's negative log-likelihood ``m [batch, *model_shape] -> [batch]`` of
        its own shots; ``None`` on a rank without shots. With ``shot_batch`` it must
        accept ``shots=`` (positions in its own shots, as :class:`GaussianLikelihood`).
    comm : mpi4py communicator or None
        The ranks to sum over (``None``: serial). Exposed as ``.comm``:
        :meth:`VariationalPosterior.fit <devito_uq.inference.VariationalPosterior.fit>`
        reads it (rank 0 alone writes checkpoints).
    shots : sequence of int, optional
        (with ``shot_batch``) The global indices of ``local``'s shots, in its data order.
    n_shots : int, optional
        (with ``shot_batch``) The number of shots over all ranks.
    shot_batch : int, optional
        Shots per stochastic evaluation, a random subset of the ``n_shots`` global
        indices drawn identically on every rank (same ``seed``); each rank solves its
        own shots of the subset, and the sum is scaled by ``n_shots / shot_batch``
        (unbiased). ``None``: every shot. Outside ``[1, n_shots]``, or with a ``local``
        that does not accept ``shots=``: :class:`InvalidArgumentError`.
    seed : int
        Seed of the subset generator (in VI checkpoints: :meth:`get_rng_state`).

    Calling it returns the ``[batch]`` sum, identical on every rank, whose model gradient
    is summed over ranks too; ``full=True`` forces every shot (MAP, metrics).
    """

    def __init__(
        self,
        local: nn.Module | None,
        comm: Any,
        shots: Any = None,
        n_shots: int | None = None,
        shot_batch: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.local = local
        self.comm = comm
        self.generator = torch.Generator().manual_seed(check_int("seed", seed))
        self.shot_batch, self.n_shots, self.shots = None, n_shots, None
        if shot_batch is None:
            return
        self.n_shots = check_int("n_shots", n_shots, minimum=1)
        self.shot_batch = check_int("shot_batch", shot_batch, minimum=1, maximum=self.n_shots)
        self.shots = [int(s) for s in (() if shots is None else shots)]
        # A GaussianLikelihood serves shots= through its operator.
        if self.shots and not all(map(_accepts_shots, (local, getattr(local, "operator", local)))):
            raise InvalidArgumentError(
                f"shot_batch={shot_batch} needs a local likelihood that accepts shots=, "
                f"but {type(local).__name__} does not"
            )

    @property
    def stochastic(self) -> bool:
        """True when each call (without ``full``) uses a random subset of the shots."""
        return self.shot_batch is not None and self.shot_batch < self.n_shots

    def draw_shots(self) -> torch.Tensor:
        """``[shot_batch]`` sorted global shot indices, the same on every rank."""
        return _draw_subset(self.n_shots, self.shot_batch, self.generator)

    def forward(self, m: torch.Tensor, full: bool = False) -> torch.Tensor:
        """``[batch]`` summed NLL of ``m [batch, ...]``; ``full``: every shot, not a subset."""
        if full or not self.stochastic:
            return rank_sum(m, self.comm, self.local)
        subset = set(self.draw_shots().tolist())  # every rank draws, shots or not
        mine = torch.tensor([i for i, s in enumerate(self.shots) if s in subset], dtype=torch.long)
        local = (lambda m_local: self.local(m_local, shots=mine)) if len(mine) else None
        return (self.n_shots / self.shot_batch) * rank_sum(m, self.comm, local)

    def get_rng_state(self) -> torch.Tensor:
        """The subset generator's ``uint8`` state (saved in checkpoints)."""
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Restore the subset generator from :meth:`get_rng_state`'s ``state``."""
        self.generator.set_state(state)


def _draw_subset(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[k]`` sorted indices drawn from ``range(n)`` without replacement by ``generator``."""
    return torch.randperm(n, generator=generator)[:k].sort()[0]


def _check_mask(mask: Any, data: torch.Tensor) -> torch.Tensor:
    """``mask`` as a bool tensor broadcastable to ``data`` with at least one live sample."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = str(mask.dtype) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidArgumentError(
            f"mask must be a bool torch.Tensor (True = recorded), got {kind}"
        )
    try:
        if torch.broadcast_shapes(mask.shape, data.shape) != data.shape:
            raise RuntimeError
    except RuntimeError:
        raise InvalidShapeError(
            f"mask of shape {list(mask.shape)} does not broadcast to data {list(data.shape)}"
        ) from None
    if mask.ndim == data.ndim and mask.shape[0] not in (1, data.shape[0]):
        raise InvalidShapeError(f"mask has {mask.shape[0]} shots, data {data.shape[0]}")
    if not bool(mask.any()):
        raise InvalidArgumentError("mask marks every sample dead: there is no data to fit")
    return mask.detach().clone()


def _accepts_shots(operator: Callable) -> bool:
    target = operator.forward if isinstance(operator, nn.Module) else operator
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return "shots" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class GaussianLikelihood(nn.Module):
    r"""Negative log-likelihood :math:`\frac{1}{2\sigma^2}\|d - F(m)\|^2` per sample.

    Parameters
    ----------
    operator : callable
        Differentiable map ``F`` from models ``[batch, *model_shape]`` to data
        ``[batch, *data_shape]`` (a devito_uq physics module, an ``nn.Linear``, any
        callable). To use ``shot_batch`` it must accept a ``shots=`` keyword (a 1-D
        ``LongTensor`` of shot indices) and then return ``[batch, len(shots), ...]``.
    data : torch.Tensor
        Observed data ``[*data_shape]``: one sample, no batch axis. With
        ``shot_batch``, shots are the leading axis.
    sigma : float, optional
        Noise standard deviation (> 0), in data units; or
    snr_db : float, optional
        Target SNR in dB, giving ``sigma = sigma_from_snr(data, snr_db)``.
    shot_batch : int, optional
        Number of shots per stochastic evaluation (``None``: all).
    seed : int
        Seed of the private generator that draws shot subsets (give every MPI rank the
        same seed: ranks must draw the same subsets).
    comm : mpi4py communicator, optional
        The ranks to spread the shots over (``None``: serial). With more than one rank,
        ``operator`` must accept ``shots=``; every rank must call the likelihood (and
        ``backward``) in the same order.
    mask : torch.Tensor, optional
        Bool, broadcastable to ``data`` (shots leading), True where a sample was
        recorded: dead or missing traces (padding of shots with fewer receivers) do not
        count in the misfit nor in ``snr_db``'s power. For shot records
        ``[shot, time, receiver]`` pass ``survey.mask()[:, None, :]``.

    Raises
    ------
    InvalidArgumentError
        A non-callable operator, non-finite data, both or neither of ``sigma`` and
        ``snr_db``, a ``shot_batch`` or ``comm`` the operator cannot serve, a bad mask.
    InvalidShapeError
        Scalar data, or a mask that does not broadcast to the data.

    Notes
    -----
    Calling the module returns the ``[batch]`` negative log-likelihood (additive
    constant dropped). ``full=True`` forces all shots (MALA needs exact values).
    """

    def __init__(
        self,
        operator: Callable[..., torch.Tensor],
        data: torch.Tensor,
        sigma: float | None = None,
        snr_db: float | None = None,
        shot_batch: int | None = None,
        seed: int = 0,
        comm: Any = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not callable(operator):
            raise InvalidArgumentError(
                f"operator must be callable (e.g. an nn.Module), got {type(operator).__name__}"
            )
        if not isinstance(data, torch.Tensor) or not data.is_floating_point():
            raise InvalidArgumentError(
                f"data must be a floating-point torch.Tensor, got {type(data).__name__}"
                + (f" of dtype {data.dtype}" if isinstance(data, torch.Tensor) else "")
            )
        if data.ndim == 0:
            raise InvalidShapeError("data must have at least one axis, got a scalar")
        # NaN data would make every misfit NaN: VI would diverge, MALA reject everything.
        check_finite("data", data)
        if mask is not None:
            mask = _check_mask(mask, data)
        if (sigma is None) == (snr_db is None):
            raise InvalidArgumentError(
                f"give exactly one of sigma and snr_db, got sigma={sigma}, snr_db={snr_db}"
            )
        if sigma is not None:
            sigma = check_positive_scalar("sigma", sigma)
        else:
            sigma = sigma_from_snr(data, snr_db, mask)
        n_shots = int(data.shape[0])
        seed = check_int("seed", seed)
        if shot_batch is not None:
            # At most the number of shots in the data (its leading axis).
            shot_batch = check_int("shot_batch", shot_batch, minimum=1, maximum=n_shots)
            if shot_batch < n_shots and not _accepts_shots(operator):
                raise InvalidArgumentError(
                    f"shot_batch={shot_batch} needs an operator that accepts shots=, "
                    f"but {type(operator).__name__} does not"
                )
        _, size = rank_and_size(comm)
        if size > 1 and not _accepts_shots(operator):
            raise InvalidArgumentError(
                f"comm with {size} ranks needs an operator that accepts shots=, "
                f"but {type(operator).__name__} does not"
            )
        self.comm = comm if size > 1 else None
        self.operator = operator
        self.register_buffer("data", data.detach().clone())
        self.register_buffer("mask", mask)
        self.sigma = sigma
        self.shot_batch = shot_batch
        self.n_shots = n_shots
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def stochastic(self) -> bool:
        """True when each call uses a random subset of the shots."""
        return self.shot_batch is not None and self.shot_batch < self.n_shots

    def residual(self, m: torch.Tensor, shots: torch.Tensor | None = None) -> torch.Tensor:
        """The (masked) residual ``d − F(m)``.

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models.
        shots : torch.Tensor, optional
            1-D shot indices (``None``: every shot).

        Returns
        -------
        torch.Tensor
            ``[batch, *data_shape]``, or ``[batch, len(shots), ...]``.

        Raises
        ------
        InvalidShapeError
            The operator's output does not match the data.
        """
        mask = self.mask
        if shots is None:
            pred, data = self.operator(m), self.data
        else:
            pred, data = self.operator(m, shots=shots), self.data[shots.to(self.data.device)]
            if mask is not None and mask.shape[0] == self.n_shots:
                mask = mask[shots.to(mask.device)]
        if pred.shape[1:] != data.shape:
            raise InvalidShapeError(
                f"operator output {tuple(pred.shape)} does not match data {tuple(data.shape)} "
                "with a leading batch axis"
            )
        res = data.to(pred.device, pred.dtype) - pred
        return res if mask is None else res * mask.to(res.device, res.dtype)

    def draw_shots(self) -> torch.Tensor:
        """``[shot_batch]`` sorted shot indices, drawn by the private generator."""
        return _draw_subset(self.n_shots, self.shot_batch, self.generator)

    def forward(
        self, m: torch.Tensor, full: bool = False, shots: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Negative log-likelihood of models (additive constant dropped).

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models.
        full : bool
            Every shot even when ``shot_batch`` is set (exact values).
        shots : torch.Tensor, optional
            1-D indices: exactly these shots, unscaled (no random subset); the operator
            must accept ``shots=``.

        Returns
        -------
        torch.Tensor
            ``[batch]``, differentiable in ``m``; the same on every MPI rank.
        """
        scale = 1.0
        if shots is None and self.stochastic and not full:
            shots = self.draw_shots()
            scale = self.n_shots / self.shot_batch
        if self.comm is None:
            misfit = self.residual(m, shots).flatten(1).pow(2).sum(1)
        else:
            misfit = self._distributed_misfit(m, shots)
        return (0.5 * scale / self.sigma**2) * misfit

    def _distributed_misfit(self, m: torch.Tensor, shots: torch.Tensor | None) -> torch.Tensor:
        """``Σ_shots ‖d_i − F_i(m)‖²`` ``[batch]``, each rank solving its share of ``shots``."""
        if shots is None:
            shots = torch.arange(self.n_shots)
        mine = shots[ShotDistribution(len(shots), self.comm).shots]

        def local(m_local: torch.Tensor) -> torch.Tensor:
            return self.residual(m_local, mine).flatten(1).pow(2).sum(1)

        # No shot here (fewer shots than ranks): the rank joins with a zero.
        return rank_sum(m, self.comm, local if len(mine) else None)

    def get_rng_state(self) -> torch.Tensor:
        """State of the shot-subset generator (saved in checkpoints).

        Returns
        -------
        torch.Tensor
            The generator's ``uint8`` state.
        """
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Restore the shot-subset generator.

        Parameters
        ----------
        state : torch.Tensor
            What :meth:`get_rng_state` returned.
        """
        self.generator.set_state(state)

    def extra_repr(self) -> str:
        ranks = "" if self.comm is None else f", ranks={self.comm.Get_size()}"
        return (
            f"sigma={self.sigma:.4g}, n_shots={self.n_shots}, shot_batch={self.shot_batch}{ranks}"
        )
