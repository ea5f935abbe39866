r"""The exact Gauss–Newton Hessian of acoustic Born modeling from receiver Green's functions.

Column by column, ``H = JᵀMJ`` costs one Born and one adjoint solve per shot and unknown:
``N`` Gauss–Newton products, hours at a few thousand unknowns. Reciprocity gives every row
of ``J`` at once. The scattered field of Born modeling
(:func:`~devito_uq.physics.acoustic.operators.born_operator`) obeys the same leapfrog
recursion as the background, forced by ``q = −δm ∂²_t u₀``; its
transfer function ``A(z)⁻¹`` is symmetric (``A(z) = (a+b)z − (2a+Δ) + (a−b)z⁻¹`` with
``a = m/Δt²`` and ``b = η/2Δt`` diagonal, ``Δ`` the symmetric Laplacian), so the response
at receiver ``r`` to a unit kick at cell ``p`` equals the response at ``p`` to a kick
injected at ``r`` with the receiver's interpolation weights — the *receiver Green's
function* ``g_r``, one forward solve per receiver position. Then, for shot ``s`` with
background ``u_s``,

.. math::
    J_s[(t, r), p] = -\sum_{\tau} g_r[t-\tau, p]\; \partial_t^2 u_s[\tau, p],

a causal convolution per cell (FFT), resampled onto the data axis (``R``), masked, and
folded from the padded grid onto the physical cells (the extension's adjoint), after which
``H = Σ_s J_sᵀ J_s`` is one matrix product per block of rows. Cost: ``shots + receiver
positions`` wave solves — for a fixed-spread survey far fewer than one per unknown —
``O(N_pad · nt log nt)`` per shot and receiver for the convolutions, and
``rows · N · (N + 1024)`` flops for the products (``rows = shots · receivers · nt_data``;
only the lower block triangle is computed). Exact to round-off: the rows equal
:class:`~.modeling.BornModeling`'s to 1e-14 (tested).

Units: time in ms, squared slowness in s²/km², as everywhere in the acoustic physics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from devito_uq.errors import InvalidArgumentError
from devito_uq.physics.acoustic.model import AcousticModel
from devito_uq.physics.acoustic.solver import AcousticSolver
from devito_uq.physics.padding import extend
from devito_uq.physics.solver import get_solver
from devito_uq.physics.survey import Shot, Survey
from devito_uq.validation import check_allocation, check_positive_int

__all__ = ["GreenCost", "born_gram", "born_gram_cost", "born_rows", "fft_length"]


def fft_length(nt: int) -> int:
    """The smallest ``2^a 3^b 5^c ≥ 2·nt``: a linear (not circular) convolution of two
    ``nt``-sample traces, at a length the FFT factors well (``2·501 = 2·3·167`` does not)."""
    n = 2 * nt
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p3 = p5
        while p3 < best:
            p2 = p3
            while p2 < n:
                p2 *= 2
            best = min(best, p2)
            p3 *= 3
        p5 *= 5
    return best


#: Rows of the Gram matrix per block product: only the lower block triangle is computed.
GRAM_PANEL = 1024


class GreenCost(dict):
    """What :func:`born_gram` will spend (a dict: ``wave_solves``, ``receiver_positions``,
    ``rows``, ``gram_flops``, ``convolution_flops``, ``bytes``)."""


def _receiver_positions(survey: Survey, shots: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique receiver positions of ``shots`` ``[R, dim]`` and, per shot, each receiver's
    index into them."""
    allpos = np.concatenate([survey.rec_positions[s] for s in shots])
    unique, inverse = np.unique(np.round(allpos, 6), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    out, k = [], 0
    for s in shots:
        n = survey.rec_positions[s].shape[0]
        out.append(inverse[k : k + n])
        k += n
    return unique, out


def born_gram_cost(model: AcousticModel, survey: Survey, shots: Any = None) -> GreenCost:
    """The wave solves, flops and memory of :func:`born_gram` for ``shots`` (default all).

    ``bytes`` counts the Gram matrix itself and the shots' background accelerations (float64);
    the receiver block's buffers come on top (see ``receiver_block`` of :func:`born_gram`).
    """
    idx = survey.select(shots)
    positions, _ = _receiver_positions(survey, idx)
    n = int(np.prod(model.shape))
    npad = int(np.prod(model.padded_shape))
    nt = survey.nt
    rows = sum(survey.nreceivers[s] for s in idx) * survey.nt_data
    nfft = fft_length(nt)
    return GreenCost(
        wave_solves=len(idx) + positions.shape[0],
        receiver_positions=int(positions.shape[0]),
        rows=int(rows),
        gram_flops=float(rows * n * (n + GRAM_PANEL)),  # the lower block triangle
        convolution_flops=float(
            sum(survey.nreceivers[s] for s in idx) * npad * (5 * nfft * np.log2(nfft) + 8 * nfft)
        ),
        bytes=int(8 * n * n + 8 * len(idx) * nt * npad),
    )


class _Rows:
    """Shared state of one assembly: solver, background accelerations, fold map, ``R``."""

    def __init__(self, model: AcousticModel, survey: Survey, m0: Any, shots: list[int]) -> None:
        self.model, self.survey, self.shots = model, survey, shots
        m0n = m0.detach().cpu().double().numpy() if isinstance(m0, torch.Tensor) else m0
        self.m0 = np.asarray(m0n, dtype=np.float64)
        self.nt, self.dt = survey.nt, survey.dt
        self.nfft = fft_length(self.nt)
        self.solver = get_solver(AcousticSolver, model, np.float64)
        self.positions, self.rec_index = _receiver_positions(survey, shots)
        n = int(np.prod(model.shape))
        # padded cell → the physical cell whose value the extension copies there
        self.fold_index = torch.from_numpy(
            extend(np.arange(n).reshape(model.shape), model.nbl).reshape(-1).astype(np.int64)
        )
        self.n = n
        r = survey.resampling()
        self.select = self.matrix = None
        if r is not None:
            hits = np.abs(r) > 0
            one = hits.sum(1) == 1
            if one.all() and np.allclose(r[hits], 1.0, rtol=0, atol=1e-12):
                self.select = torch.from_numpy(hits.argmax(1))  # point sampling: no product
            else:
                self.matrix = torch.from_numpy(r)
        self._buffers: dict[str, torch.Tensor] = {}
        self.masks = [survey.mask([s])[0] for s in shots]
        self.accel = [self._acceleration(s) for s in shots]  # [npad, nt] per shot

    def _saved(self, shot: Shot, wavelet: np.ndarray | None = None) -> torch.Tensor:
        """The forward wavefield at every step, time last: ``[npad, nt + 1]`` (float64;
        the FFTs along time then run on contiguous rows)."""
        wf = self.solver.acquire_wavefield(self.nt)
        try:
            self.solver.forward(self.m0, shot, self.dt, wavefield=wf, wavelet=wavelet)
            u = torch.from_numpy(np.asarray(wf.function.data)).flatten(1)
            return u.T.to(torch.float64).contiguous()
        finally:
            wf.owner = None

    def _acceleration(self, s: int) -> torch.Tensor:
        """``∂²_t u₀[τ]`` as Born uses it (central difference, ``τ = 1 … nt-1``)."""
        u = self._saved(self.survey.shot(s))
        acc = torch.zeros(u.shape[0], self.nt, dtype=torch.float64)
        acc[:, 1:] = (u[:, 2:] - 2 * u[:, 1:-1] + u[:, :-2]) / self.dt**2
        return acc

    def green(self, positions: np.ndarray) -> torch.Tensor:
        """Receiver Green's functions ``g[r, p, ℓ]`` ``[len(positions), npad, nt]``: the
        field ``ℓ`` steps after a unit kick injected at the receiver (the loop's first
        injection, at step 1, lands in ``u[2]``)."""
        kick = np.zeros(self.nt)
        kick[1] = 1.0
        out = []
        for pos in positions:
            u = self._saved(Shot(pos, pos[None], kick), kick)
            out.append(u[:, 1:])  # g[ℓ] = u[ℓ + 1]
        return torch.stack(out)

    def _buffer(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != torch.Size(shape) or buf.dtype != dtype:
            buf = self._buffers[name] = torch.empty(shape, dtype=dtype)
        return buf

    def rows(self, i: int, ghat: torch.Tensor, receivers: np.ndarray) -> torch.Tensor:
        """``Jᵀ`` columns of the i-th shot for its receivers ``receivers`` (indices into the
        shot's receivers; ``ghat`` ``[len, npad, nfreq]`` their Green's functions' spectra):
        ``[N, len, nt_data]``, pixel-major for the Gram product."""
        uhat = torch.fft.rfft(self.accel[i], n=self.nfft, dim=1)
        # Reused buffers: fresh ones of this size cost as much in page faults as the FFTs.
        prod = self._buffer("prod", ghat.shape, ghat.dtype)
        torch.mul(ghat, uhat, out=prod)
        conv = torch.fft.irfft(prod, n=self.nfft, dim=2)[..., : self.nt]
        if self.select is not None:
            conv = conv[..., self.select]
        elif self.matrix is not None:
            conv = conv @ self.matrix.T
        live = torch.from_numpy(self.masks[i][receivers].astype(np.float64))
        conv *= -live[:, None, None]  # J = −g ∗ ∂²_t u₀, dead traces zero
        folded = torch.zeros(self.n, conv.shape[0], conv.shape[2], dtype=torch.float64)
        return folded.index_add_(0, self.fold_index, conv.transpose(0, 1))


def _check_model(model: Any) -> None:
    if not isinstance(model, AcousticModel):
        raise InvalidArgumentError(
            f"the Green's-function Hessian needs an AcousticModel; got {type(model).__name__}"
        )


def _prepare(model, survey, m0, shots) -> _Rows:
    _check_model(model)
    return _Rows(model, survey, m0, survey.select(shots))


def born_rows(model: AcousticModel, survey: Survey, m0: Any, shot: int) -> torch.Tensor:
    """The Born Jacobian of one shot, every row: ``[nreceivers, nt_data, nx·nz]`` float64.

    ``J[r, t, :] · δm.flatten()`` is :class:`~.modeling.BornModeling`'s trace ``r`` at data
    sample ``t`` (dead traces zero). For tests and small problems: the result is dense.
    """
    _check_model(model)
    check_allocation(
        "a dense Born Jacobian",
        8 * survey.nreceivers[shot] * survey.nt_data * int(np.prod(model.shape)),
    )
    state = _prepare(model, survey, m0, [shot])
    idx = state.rec_index[0]
    ghat = torch.fft.rfft(state.green(state.positions[idx]), n=state.nfft, dim=2)
    return state.rows(0, ghat, np.arange(idx.size)).permute(1, 2, 0).contiguous()


def born_gram(
    model: AcousticModel,
    survey: Survey,
    m0: Any,
    shots: Any = None,
    receiver_block: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """``Σ_s J_sᵀ M_s J_s`` ``[N, N]`` float64, exactly, from receiver Green's functions.

    ``J_s`` is the Born Jacobian of shot ``s`` at background ``m0`` (``[nx, nz]``
    s²/km²) onto the data axis, ``M_s`` its trace mask; divide by ``σ²`` for the
    Gauss–Newton Hessian of a Gaussian likelihood. Cost: :func:`born_gram_cost`.

    Parameters
    ----------
    model : AcousticModel
        Grid, absorbing layer and space order.
    survey : ~devito_uq.physics.survey.Survey
        Shots, receivers, axes, wavelet and trace mask.
    m0 : tensor or array ``[nx, nz]``
        Background squared slowness.
    shots : optional
        Shot indices (default: all); receivers shared between shots are solved once.
    receiver_block : int
        Receiver positions whose Green's functions are held at once (memory
        ``≈ 3 · 16 · block · nt · N_pad`` bytes).
    progress : bool
        A progress bar over the receiver blocks.

    Raises
    ------
    InvalidArgumentError
        Not an acoustic model, a bad block size, or not enough memory for the Gram matrix.
    """
    block = check_positive_int("receiver_block", receiver_block)
    _check_model(model)
    cost = born_gram_cost(model, survey, shots)
    check_allocation(f"the {int(np.prod(model.shape))}² Gauss–Newton matrix", cost["bytes"])
    state = _prepare(model, survey, m0, shots)
    gram = torch.zeros(state.n, state.n, dtype=torch.float64)
    starts = range(0, state.positions.shape[0], block)
    for b0 in tqdm(starts, desc="Green's functions", disable=not progress, leave=False):
        chosen = np.arange(b0, min(b0 + block, state.positions.shape[0]))
        ghat = torch.fft.rfft(state.green(state.positions[chosen]), n=state.nfft, dim=2)
        for i in range(len(state.shots)):
            # this shot's receivers in the block, and where their spectra sit in ghat
            mine = np.flatnonzero(np.isin(state.rec_index[i], chosen))
            if mine.size == 0:
                continue
            where = np.searchsorted(chosen, state.rec_index[i][mine])
            own = ghat if np.array_equal(where, np.arange(chosen.size)) else ghat[where]
            _add_lower_gram(gram, state.rows(i, own, mine).reshape(state.n, -1))
    lower = torch.tril(gram)
    return lower + torch.tril(lower, -1).T


def _add_lower_gram(gram: torch.Tensor, jt: torch.Tensor, panel: int = GRAM_PANEL) -> None:
    """``gram += jt jtᵀ`` (``jt`` ``[N, rows]``) on the lower block triangle only: about
    half the flops of the full product (BLAS has no ``syrk`` in torch); the caller mirrors."""
    n = jt.shape[0]
    for i in range(0, n, panel):
        end = min(i + panel, n)
        gram[i:end, :end].addmm_(jt[i:end], jt[:end].T)
