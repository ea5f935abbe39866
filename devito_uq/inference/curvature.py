r"""High-rank curvature from a few batches of impulse responses: product convolution.

An imaging Gauss–Newton Hessian :math:`H = J^\top J/\sigma^2` is high-rank (751 of 861
prior-whitened eigenvalues above 1 on the imaging default case) but *local*: its column
:math:`H(\cdot, y)`, the point-spread function (PSF) of a spike at :math:`y`, is a
band-limited blob a wavelength or two wide that changes slowly with :math:`y`. So (Alger,
Hartland, Petra & Ghattas 2024; Hu, Alger, Nammour & Ghattas 2025):

1. **Batches of impulse responses.** Sample points on a regular lattice of ``step``
   cells per axis are split into ``comb[0]·comb[1]`` combs of spikes ``comb·step`` cells
   apart; one Hessian product per comb gives the PSFs of all its spikes at once, each
   cut to the box of radius :math:`r = \lfloor(\text{comb}\cdot\text{step}-1)/2\rfloor`
   around its spike (kernels wider than that are truncated).
2. **Interpolation.** With :math:`w_a` the bilinear hat functions of the lattice (a
   partition of unity) and :math:`\varphi_a(d) = H(y_a + d, y_a)`,

   .. math::
       H(x, y) \approx \sum_a w_a(y)\, \varphi_a(x - y), \qquad
       A v = \sum_a \varphi_a * (w_a \odot v),

   applied patch by patch (each hat patch convolved with its own kernel, then summed);
   lattice points beyond the last row or column borrow the nearest measured kernel.
3. **Symmetrize:** :math:`H_{\rm pc} = \tfrac12 (A + A^\top)`.

Measured limit (``benchmarks/results/bench_curvature.md``): on the imaging default case
(41 × 21, 8 Hz) the Born Hessian's PSFs reach across most of the window (slowly decaying
horizontal tails beside an oscillating core), so kernels truncated at a comb radius of
3–10 cells leave a relative operator error of 0.4–0.9 on random whitened vectors — worse
than a randomized low-rank part at the same products — and, being indefinite, do not
precondition ``I + H̃``. Kernels wider than a regular comb allows (adaptive spike
placement from kernel moments, as in Alger et al.) are the next step.

Cost: ``comb[0]·comb[1]`` Hessian products (one batched call), independent of the number
of unknowns ``N``; applying :math:`H_{\rm pc}` costs
:math:`O(N (2\,\text{step}+2r)^2)` flops per vector and no PDE solve. With ``step = 1``
every cell is sampled and :math:`H_{\rm pc} = H` exactly for kernels within radius ``r``.

The approximation is of the misfit Hessian :math:`H` itself, not of the prior-whitened
:math:`\tilde H = L^\top H L`: the PSFs of :math:`H` are the local, physics-given kernels the
method models, one set of impulse responses serves any prior, and whitening afterwards is
exact and cheap (:class:`WhitenedPrecision`: :math:`I + L^\top H_{\rm pc} L`, whose
eigendecomposition gives an inverse square root and a log-determinant, or whose inverse is
applied by an inner CG that costs no PDE solve).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.rto import check_batch, conjugate_gradient
from devito_uq.validation import (
    check_choice,
    check_int_tuple,
    check_positive_int,
    check_positive_scalar,
)

__all__ = [
    "ProductConvolution",
    "WhitenedPrecision",
    "product_convolution",
    "relative_operator_error",
]

Batch = Callable[[torch.Tensor], torch.Tensor]


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    return check_int_tuple(name, value, 2, minimum=1)


@dataclass
class ProductConvolution:
    """:math:`H_{\\rm pc} = \\tfrac12(A + A^\\top)` of the module docstring.

    Build it with :func:`product_convolution`.

    Attributes
    ----------
    kernels : torch.Tensor
        ``[Px·Pz, 2rx+1, 2rz+1]`` float64: ``φ_a(d)`` at lattice point ``a`` (row-major
        over the ``[Px, Pz]`` lattice, points beyond the grid holding their nearest
        measured neighbour's kernel), offset ``d = (i − rx, j − rz)`` cells.
    shape : tuple of int
        ``(nx, nz)``.
    step : tuple of int
        Lattice spacing per axis, cells.
    products : int
        Hessian products spent building it.
    """

    kernels: torch.Tensor
    shape: tuple[int, int]
    step: tuple[int, int]
    products: int

    def __post_init__(self) -> None:
        (hx, hz), (nx, nz) = self.step, self.shape
        self.lattice = (-(-(nx - 1) // hx) + 1, -(-(nz - 1) // hz) + 1)
        self.radius = ((self.kernels.shape[1] - 1) // 2, (self.kernels.shape[2] - 1) // 2)
        self.patch = (2 * hx - 1, 2 * hz - 1)
        # bilinear hat weights on one lattice patch: the same for every lattice point
        wx = 1 - torch.arange(-hx + 1, hx, dtype=torch.float64).abs() / hx
        wz = 1 - torch.arange(-hz + 1, hz, dtype=torch.float64).abs() / hz
        self.hat = wx[:, None] * wz[None, :]
        # padded canvas holding every lattice patch: pixel x sits at x + pad
        self.pad = (hx - 1 + self.radius[0], hz - 1 + self.radius[1])
        self.canvas = tuple(
            (p + 1) * h - 1 + 2 * r for p, h, r in zip(self.lattice, self.step, self.radius)
        )

    def _weights(self, like: torch.Tensor) -> torch.Tensor:
        return self.kernels.to(like)[:, None]

    def _scatter(self, v: torch.Tensor) -> torch.Tensor:
        """``A v``: hat patches of ``v`` convolved with their kernels, summed."""
        k, (nx, nz), (px, pz), (rx, rz) = v.shape[0], self.shape, self.pad, self.radius
        canvas = v.new_zeros(k, 1, *self.canvas)
        canvas[:, 0, px : px + nx, pz : pz + nz] = v
        small = canvas[:, :, rx : self.canvas[0] - rx, rz : self.canvas[1] - rz]
        cols = F.unfold(small, self.patch, stride=self.step)  # [k, patch, P]
        u = (cols.transpose(1, 2).reshape(k, -1, *self.patch)) * self.hat.to(v)
        big = F.conv_transpose2d(u, self._weights(v), groups=u.shape[1])  # [k, P, ...]
        size = big.shape[-2:]
        out = F.fold(big.flatten(2).transpose(1, 2), self.canvas, size, stride=self.step)
        return out[:, 0, px : px + nx, pz : pz + nz]

    def _gather(self, v: torch.Tensor) -> torch.Tensor:
        """``Aᵀ v``: the adjoint of :meth:`_scatter` (conv2d is conv_transpose2d's adjoint)."""
        k, (nx, nz), (px, pz), (rx, rz) = v.shape[0], self.shape, self.pad, self.radius
        canvas = v.new_zeros(k, 1, *self.canvas)
        canvas[:, 0, px : px + nx, pz : pz + nz] = v
        size = (self.patch[0] + 2 * rx, self.patch[1] + 2 * rz)
        cols = F.unfold(canvas, size, stride=self.step)
        big = cols.transpose(1, 2).reshape(k, -1, *size)
        u = F.conv2d(big, self._weights(v), groups=big.shape[1]) * self.hat.to(v)
        small_size = (self.canvas[0] - 2 * rx, self.canvas[1] - 2 * rz)
        out = F.fold(u.flatten(2).transpose(1, 2), small_size, self.patch, stride=self.step)
        return out[:, 0, px - rx : px - rx + nx, pz - rz : pz - rz + nz]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H_pc v``, no PDE solve.

        Parameters
        ----------
        v : torch.Tensor
            ``[k, nx, nz]``.

        Returns
        -------
        torch.Tensor
            ``[k, nx, nz]``, dtype of ``v``.
        """
        check_batch("v", v, self.shape)
        return 0.5 * (self._scatter(v) + self._gather(v))

    __call__ = matvec

    def dense(self, chunk: int = 256) -> torch.Tensor:
        """``H_pc`` as a dense ``[N, N]`` float64 matrix (``N = nx·nz``; row-major pixels)."""
        return _assemble(self.matvec, self.shape, chunk)


def _assemble(apply: Batch, shape: tuple[int, ...], chunk: int) -> torch.Tensor:
    n = math.prod(shape)
    cols = []
    for k in range(0, n, chunk):
        e = torch.zeros(min(chunk, n - k), n, dtype=torch.float64)
        e[torch.arange(e.shape[0]), torch.arange(k, k + e.shape[0])] = 1.0
        cols.append(apply(e.reshape(-1, *shape)).reshape(-1, n))
    h = torch.cat(cols).T  # column j = apply(e_j)
    return 0.5 * (h + h.T)


def product_convolution(apply: Batch, shape: tuple[int, int], step=2, comb=4) -> ProductConvolution:
    """Build :class:`ProductConvolution` from ``comb[0]·comb[1]`` products of ``apply``.

    Parameters
    ----------
    apply : callable
        A batch of products of the symmetric operator to approximate, ``[k, nx, nz] ->
        [k, nx, nz]`` (e.g. :func:`~devito_uq.apps.imaging.curvature.gauss_newton_operator`),
        called once with every comb.
    shape : tuple of int
        ``(nx, nz)``.
    step : int or (int, int)
        Lattice spacing of the sample points per axis, cells (1: every cell).
    comb : int or (int, int)
        Combs per axis: spikes ``comb·step`` cells apart, kernel radius
        ``(comb·step − 1) // 2`` cells.

    Returns
    -------
    ProductConvolution

    Raises
    ------
    InvalidArgumentError
        ``shape``, ``step`` or ``comb`` not positive integers; ``apply`` returns
        non-finite values.
    InvalidShapeError
        ``apply`` returns another shape.
    """
    shape = check_int_tuple("shape", shape, 2, minimum=1)
    step, comb = _pair("step", step), _pair("comb", comb)
    (nx, nz), (hx, hz), (cx, cz) = shape, step, comb
    rx, rz = (cx * hx - 1) // 2, (cz * hz - 1) // 2
    lx, lz = -(-(nx - 1) // hx) + 1, -(-(nz - 1) // hz) + 1  # lattice, past the last cell
    combs, members = [], []
    for bx in range(cx):
        for bz in range(cz):
            pts = [
                (a, b)
                for a in range(bx, lx, cx)
                for b in range(bz, lz, cz)
                if a * hx < nx and b * hz < nz
            ]
            if pts:  # a comb with no spike inside the grid costs nothing
                spikes = torch.zeros(shape, dtype=torch.float64)
                for a, b in pts:
                    spikes[a * hx, b * hz] = 1.0
                combs.append(spikes)
                members.append(pts)
    responses = check_batch("apply(combs)", apply(torch.stack(combs)), shape).double()
    padded = F.pad(responses, (rz, rz, rx, rx))
    kernels = torch.zeros(lx, lz, 2 * rx + 1, 2 * rz + 1, dtype=torch.float64)
    for resp, pts in zip(padded, members):
        for a, b in pts:  # the window of radius r around the spike (padded coordinates)
            kernels[a, b] = resp[a * hx : a * hx + 2 * rx + 1, b * hz : b * hz + 2 * rz + 1]
    # lattice points past the grid's last row/column: the nearest measured kernel
    ax = torch.clamp(torch.arange(lx), max=(nx - 1) // hx)
    az = torch.clamp(torch.arange(lz), max=(nz - 1) // hz)
    kernels = kernels[ax][:, az]
    return ProductConvolution(
        kernels.reshape(lx * lz, 2 * rx + 1, 2 * rz + 1), shape, step, len(combs)
    )


class WhitenedPrecision:
    """``P = I + Lᵀ H L``: the posterior precision in the prior-whitened latent ``w``
    (``m = μ + L w``), for a cheap Hessian ``H`` (e.g. :class:`ProductConvolution`).

    A product convolution need not be positive semi-definite (truncated, interpolated
    kernels), while the exact ``P ⪰ I``; the dense method therefore projects: eigenvalues of
    ``P`` below 1 are raised to 1 (``clamped`` counts them).

    Parameters
    ----------
    hessian : callable
        ``[k, *shape] -> [k, *shape]``, symmetric, no PDE solve.
    sqrt : object
        The prior square root ``L``: ``matvec``, ``rmatvec`` on ``[k, *shape]``
        (:meth:`~devito_uq.inference.CorrelatedGaussianPrior.sqrt`,
        :class:`~devito_uq.inference.DiagonalSqrt`).
    shape : tuple of int
        One model's shape.
    method : str
        ``"dense"``: assemble ``P`` with ``N`` cheap products and diagonalize it
        (``O(N³)`` flops and ``O(N²)`` memory once, about a minute at ``N`` = 6,000 on one
        core; exact :meth:`solve`, :meth:`logdet`, :meth:`inverse_sqrt`); ``"cg"``:
        :meth:`solve` by an inner CG on ``P`` to ``rtol`` (memory ``O(N)``, no PDE solve,
        no log-determinant; needs ``H`` positive semi-definite — a column whose CG meets
        negative curvature stops there); ``"auto"``: dense up to ``max_dense`` unknowns.
    rtol : float
        Relative residual of the inner CG.
    max_dense : int
        Largest ``N`` that ``"auto"`` assembles.
    """

    def __init__(
        self,
        hessian: Batch,
        sqrt,
        shape: tuple[int, ...],
        method: str = "auto",
        rtol: float = 1e-8,
        max_dense: int = 6000,
    ) -> None:
        check_choice("method", method, ("auto", "dense", "cg"))
        self.hessian, self.sqrt, self.shape = hessian, sqrt, tuple(shape)
        self.rtol = check_positive_scalar("rtol", rtol)
        n = math.prod(self.shape)
        self.method = method if method != "auto" else ("dense" if n <= max_dense else "cg")
        self.inner_iterations = 0
        self.eigenvalues = self.eigenvectors = None
        self.clamped = 0
        if self.method == "dense":
            mu, self.eigenvectors = torch.linalg.eigh(_assemble(self.matvec, self.shape, 256))
            self.clamped = int((mu < 1).sum())
            self.eigenvalues = mu.clamp_min(1.0)

    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        """``P w`` for ``w`` ``[k, *shape]`` (unprojected)."""
        return w + self.sqrt.rmatvec(self.hessian(self.sqrt.matvec(w)))

    def _spectral(self, b: torch.Tensor, power: float) -> torch.Tensor:
        q = self.eigenvectors
        flat = b.reshape(b.shape[0], -1).to(q)
        return (((flat @ q) * self.eigenvalues.pow(power)) @ q.T).reshape(b.shape).to(b)

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``P⁻¹ b`` for ``b`` ``[k, *shape]``: exact (dense, projected) or inner CG to
        ``rtol``."""
        if self.eigenvectors is None:
            res = conjugate_gradient(self.matvec, b, rtol=self.rtol, maxiter=10_000)
            self.inner_iterations += int(res.iterations.sum())
            return res.x
        return self._spectral(b, -1.0)

    __call__ = solve

    def inverse_sqrt(self, z: torch.Tensor) -> torch.Tensor:
        """``P^{-1/2} z`` (symmetric root): ``z ~ N(0, I)`` gives ``w ~ N(0, P⁻¹)``.

        The latent map of a flow: ``m = μ + L P^{-1/2} z``. Dense method only.
        """
        self._need_dense("inverse_sqrt")
        return self._spectral(z, -0.5)

    def logdet(self) -> float:
        """``log det P`` (dense method only)."""
        self._need_dense("logdet")
        return float(torch.log(self.eigenvalues).sum())

    def _need_dense(self, what: str) -> None:
        if self.eigenvectors is None:
            raise InvalidArgumentError(f"{what} needs method='dense'; this one is {self.method!r}")


def relative_operator_error(approx: Batch, v: torch.Tensor, hv: torch.Tensor) -> torch.Tensor:
    """``‖(H − H_approx) v‖ / ‖H v‖`` per vector.

    Parameters
    ----------
    approx : callable
        ``[k, *shape] -> [k, *shape]``.
    v, hv : torch.Tensor
        ``[k, *shape]`` probes and the exact operator's products on them.

    Returns
    -------
    torch.Tensor
        ``[k]`` float64.
    """
    if v.shape != hv.shape:
        raise InvalidShapeError(f"v {tuple(v.shape)} and hv {tuple(hv.shape)} differ in shape")
    check_positive_int("number of probes", v.shape[0] if v.ndim else 0)
    diff = (hv.double() - approx(v).double()).flatten(1).norm(dim=1)
    return diff / hv.double().flatten(1).norm(dim=1)
