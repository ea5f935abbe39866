r"""A laterally stationary, positive semi-definite Gauss–Newton Hessian from a few products.

On a 2D section with a surface acquisition the Born Hessian :math:`H = J^\top J/\sigma^2` is
*not* local (its columns spread along isochrones across most of the line: at 5,151
unknowns a shallow PSF keeps only 63 % of its energy within 6 cells, which defeats
truncated point-spread-function kernels, :mod:`~devito_uq.inference.curvature`), but its
*normalized* coupling changes slowly along the line. So, with
:math:`S = \operatorname{diag}(H)^{1/2}`,

.. math::
    H \approx \hat H = S\, T\, S, \qquad
    T\big((x, z), (x', z')\big) = K_{z z'}(x - x'),

a kernel that couples every pair of depths and depends on the lateral offset only
(block-Toeplitz along x, dense along z):

1. **Columns at a few traces.** ``nz`` products :math:`H e_{(x_0, z')}` per node trace
   :math:`x_0` (one spike per depth) give
   :math:`K_{zz'}(d) = H\big((x_0+d, z), (x_0, z')\big) / (S_{x_0+d,z} S_{x_0,z'})` for every
   offset the section holds on both sides of :math:`x_0`; symmetrized,
   :math:`K(-d) = K(d)^\top`. Several node traces are combined by the harmonic mean of
   their symbols (below): a direction counts as informed only as far as every trace says.
2. **Positive semi-definite by construction.** Zero-padded to ``2 nx`` traces, the
   Fourier transform along x turns :math:`T` into one Hermitian ``[nz, nz]`` block
   :math:`B(k)` per lateral wavenumber; negative eigenvalues of each block are set to 0
   (several traces: :math:`m\,(\sum_i B_i(k)^{+})^{-1}`).
   :math:`\hat H` is then PSD (a restriction of a PSD circulant), so
   :math:`I + L^\top \hat H L \succeq I` is a valid posterior precision and
   preconditioner (:class:`~devito_uq.inference.curvature.WhitenedPrecision`), and
   :meth:`LateralStationaryHessian.noise` draws :math:`n \sim N(0, \hat H)` for
   randomize-then-optimize.
3. **The diagonal from ``p`` random probes** with :math:`\hat H` as control variate:
   :math:`\operatorname{diag}(H) \approx \operatorname{diag}(\hat H) + \operatorname{mean}_i\,
   z_i \odot (H z_i - \hat H z_i)` (Rademacher :math:`z_i`; the control variate removes
   most of the variance of Bekas et al.'s estimator), smoothed over a box of
   ``smooth`` cells, iterated a few times without new products; the node traces keep
   their exact diagonal.

Cost: ``nodes·nz + probes + check`` Hessian products whatever the line length; applying
:math:`\hat H` costs two FFTs along x and ``2 nx`` dense ``[nz, nz]`` products per vector.
``check`` held-out Gaussian probes give an honest relative operator error.

Measured (``benchmarks/results/bench_lateral.md``, exact dense Born posteriors as the
reference; not a calibrated error bar, see the numbers): on the 5,151-unknown Marmousi
window (101 × 51, 16 shots, Born at 20 dB), from 51–102 + 36 products, the posterior std
of :math:`(I + L^\top \hat H L)^{-1}` has a median ratio of 0.96–1.00 and the truth inside
its 90 % band at 85–94 % of pixels, but a mean pointwise error of 24–48 % for one node
trace (which trace matters: mid-depth pixels come out too narrow where the section's
lateral variation breaks stationarity), and 16 % / 14 % for the default pair with the
app's low-rank eigenpairs deflated in (rank 200 / 400: 11 % / 19 % of the products of full
rank; band 91 % / 90 %) — a recipe chosen on that window:
on the imaging default case (41 × 21) the same recipe leaves 37–59 % with a median ratio
of 0.55–0.88. The app's rank-1,000 Laplace spends 2,020 products there for a median ratio
of 1.21 and a mean error of 310 %. As a preconditioner of the exact MAP solve it is weak
(1,000–3,400 products to rtol 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.curvature import relative_operator_error
from devito_uq.inference.rto import check_batch
from devito_uq.validation import check_int_tuple, check_nonnegative_int, check_positive_int

__all__ = ["LateralStationaryHessian", "lateral_stationary_hessian"]

Batch = Callable[[torch.Tensor], torch.Tensor]

#: Floor of the diagonal relative to its largest value (unilluminated cells: a scale of
#: zero would make the normalized kernel 0/0; at 1e-12 the noisy probed diagonal of such
#: cells blew the kernel up within two refinements on the 5,151-unknown window).
DIAGONAL_FLOOR = 1e-6
#: Floor of the probed diagonal relative to the node trace's at the same depth: the
#: estimate is noisy where the illumination is weak, and a negative or near-zero value
#: there divides the normalized kernel by ~0.
LATERAL_FLOOR = 1e-2
#: Regularization of the harmonic mean of several traces' blocks, relative to the largest
#: eigenvalue of any block.
HARMONIC_FLOOR = 1e-12


class LateralStationaryHessian:
    r"""``Ĥ = S T S`` on ``[k, nx, nz]`` tensors (see the module).

    Parameters
    ----------
    symbol : torch.Tensor
        ``[2 nx, nz, nz]`` complex128: the PSD blocks ``B(k)`` of ``T`` per lateral
        wavenumber of the zero-padded line (``torch.fft.fft`` along x of the kernel).
    scale : torch.Tensor
        ``S``: ``[nx, nz]`` float64, the square root of the estimated diagonal of ``H``
        (1/model units).

    Attributes
    ----------
    products : int
        Hessian products spent building it (set by :func:`lateral_stationary_hessian`).
    check_error : float or None
        ``‖(H − Ĥ) v‖/‖H v‖`` averaged over the held-out probes (None without any).
    clipped : float
        Share of the symbol's eigenvalue mass (absolute) that was negative and set to 0.
    """

    def __init__(self, symbol: torch.Tensor, scale: torch.Tensor) -> None:
        if scale.ndim != 2 or symbol.shape != (2 * scale.shape[0], scale.shape[1], scale.shape[1]):
            raise InvalidShapeError(
                f"symbol {tuple(symbol.shape)} does not fit scale {tuple(scale.shape)}: "
                "expected [2 nx, nz, nz] for scale [nx, nz]"
            )
        self.symbol, self.scale = symbol, scale
        self.shape = tuple(scale.shape)
        self._sqrt: torch.Tensor | None = None  # B^{1/2}, built on the first noise() call
        self.products = 0
        self.check_error: float | None = None
        self.clipped = 0.0

    def _circulant(self, blocks: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Apply the block circulant with ``blocks`` to ``u`` ``[k, 2nx, nz]`` (real)."""
        spec = torch.fft.fft(u.to(torch.complex128), dim=1)
        return torch.fft.ifft(torch.einsum("xab,kxb->kxa", blocks, spec), dim=1).real

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``Ĥ v`` for ``v`` ``[k, nx, nz]`` (model units) → 1/model units, dtype of ``v``."""
        v = check_batch("v", v, self.shape)
        nx = self.shape[0]
        u = F.pad(self.scale * v.double(), (0, 0, 0, nx))
        return (self.scale * self._circulant(self.symbol, u)[:, :nx]).to(v.dtype)

    matvec = __call__

    def diagonal(self) -> torch.Tensor:
        """``diag(Ĥ)`` ``[nx, nz]`` float64."""
        k0 = torch.fft.ifft(self.symbol, dim=0)[0].real.diagonal()
        return self.scale**2 * k0

    def noise(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""``k`` draws of :math:`N(0, \hat H)`, ``[k, nx, nz]`` float64: ``S R G ξ`` with
        ``G`` the block circulant of :math:`B^{1/2}` and ``ξ`` white on the padded line
        (the data-noise term of randomize-then-optimize, without a PDE solve)."""
        k = check_positive_int("k", k)
        nx, nz = self.shape
        xi = torch.randn(k, 2 * nx, nz, generator=generator, dtype=torch.float64)
        if self._sqrt is None:
            w, v = torch.linalg.eigh(self.symbol)
            self._sqrt = (v * w.clamp_min(0).sqrt()[:, None, :].to(v.dtype)) @ v.mH
        return self.scale * self._circulant(self._sqrt, xi)[:, :nx]


def _smooth(d: torch.Tensor, width: tuple[int, int]) -> torch.Tensor:
    """Box average over ``(2·wx+1) × (2·wz+1)`` cells, renormalized at the edges."""
    if width == (0, 0):
        return d
    box = torch.ones(1, 1, 2 * width[0] + 1, 2 * width[1] + 1, dtype=d.dtype)
    num = F.conv2d(d[None, None], box, padding=width)[0, 0]
    den = F.conv2d(torch.ones_like(d)[None, None], box, padding=width)[0, 0]
    return num / den


def _kernel_blocks(columns: torch.Tensor, scale: torch.Tensor, node: int) -> torch.Tensor:
    """Hermitian blocks ``B(k)`` ``[2nx, nz, nz]`` from one trace's columns ``[nz', nx, nz]``."""
    nz, nx, _ = columns.shape
    kernel = torch.zeros(2 * nx, nz, nz, dtype=torch.float64)
    lag = (torch.arange(nx) - node) % (2 * nx)  # offset from the node, wrapped on the padded line
    # K[d][z, z'] = H((node+d, z), (node, z')) / (S[node+d, z] S[node, z'])
    kernel[lag] = columns.permute(1, 2, 0) / (scale[:, :, None] * scale[node][None, None, :])
    mirror = (-torch.arange(2 * nx)) % (2 * nx)
    kernel = 0.5 * (kernel + kernel[mirror].transpose(1, 2))  # K(−d) = K(d)ᵀ: T symmetric
    blocks = torch.fft.fft(kernel.to(torch.complex128), dim=0)
    return 0.5 * (blocks + blocks.mH)


def _symbol(columns: dict[int, torch.Tensor], scale: torch.Tensor) -> tuple[torch.Tensor, float]:
    """PSD blocks from the columns of one or more traces, and the clipped share.

    One trace: its blocks with negative eigenvalues set to 0. Several: the harmonic mean
    ``m (Σ_i B_i⁺)⁻¹`` of their clipped blocks — a direction counts as informed only as
    far as every trace's kernel says so (on the 5,151-unknown Marmousi window the
    arithmetic mean, or windows blending the traces, made the posterior too narrow: each
    trace's kernel informs directions, e.g. its dip, that are null elsewhere).
    """
    total, clipped, inverse = 0.0, 0.0, 0
    clean = []
    for node, cols in columns.items():
        w, v = torch.linalg.eigh(_kernel_blocks(cols, scale, node))
        clipped += float(w.clamp(max=0).abs().sum())
        total += float(w.abs().sum())
        clean.append((w.clamp_min(0), v))
    if len(clean) == 1:
        w, v = clean[0]
        return (v * w[:, None, :].to(v.dtype)) @ v.mH, clipped / max(total, 1e-300)
    # a floor far below the largest eigenvalue keeps the inverses finite (null directions
    # stay null: their inverse dominates the sum)
    floor = HARMONIC_FLOOR * max(float(w.max()) for w, _ in clean)
    for w, v in clean:
        inverse = inverse + (v / (w + floor)[:, None, :].to(v.dtype)) @ v.mH
    w, v = torch.linalg.eigh(0.5 * (inverse + inverse.mH))
    mean = (len(clean) / w - floor).clamp_min(0)
    return (v * mean[:, None, :].to(v.dtype)) @ v.mH, clipped / max(total, 1e-300)


def lateral_stationary_hessian(
    apply: Batch,
    shape: tuple[int, int],
    nodes: Sequence[int] | None = None,
    probes: int = 32,
    check: int = 4,
    smooth: tuple[int, int] = (4, 1),
    iterations: int = 3,
    seed: int = 0,
) -> LateralStationaryHessian:
    """Build :class:`LateralStationaryHessian` from ``len(nodes)·nz + probes + check``
    products of ``H``.

    Parameters
    ----------
    apply : callable
        ``H``: ``[k, nx, nz] -> [k, nx, nz]`` float64 (Gauss–Newton products, symmetric),
        called three times: with the node traces' spikes (one per depth and node), the
        ``probes`` and the ``check`` vectors.
    shape : tuple of int
        ``(nx, nz)``: traces along the line, cells in depth.
    nodes : sequence of int, optional
        The traces whose columns define the kernel (``nz`` products each), combined by the
        harmonic mean of their symbols; default the traces at 30 % and 70 % of the line
        (the best of the single traces and pairs tried on the 5,151-unknown Marmousi
        window, ``benchmarks/results/bench_lateral.md``). A kernel reaches as far from
        its trace as the line allows; beyond that the coupling is 0.
    probes : int
        Rademacher probes for the diagonal; 0 takes the nearest node trace's diagonal for
        every trace (no lateral illumination change).
    check : int
        Held-out Gaussian probes for :attr:`~LateralStationaryHessian.check_error`.
    smooth : tuple of int
        Half-widths ``(x, z)`` in cells of the box that smooths the probed diagonal.
    iterations : int
        Control-variate refinements of the diagonal (no new products).
    seed : int
        Seed of the probes.

    Returns
    -------
    LateralStationaryHessian

    Raises
    ------
    InvalidShapeError
        ``shape`` not two positive ints, or ``apply`` returns another shape.
    InvalidArgumentError
        A node outside the line, repeated nodes, negative counts.
    """
    nx, nz = check_int_tuple("shape", shape, 2, minimum=1)
    if nodes is None:
        nodes = sorted({round(0.3 * (nx - 1)), round(0.7 * (nx - 1))})
    nodes = list(nodes) if isinstance(nodes, (list, tuple)) else [nodes]
    for node in nodes:
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < nx:
            raise InvalidArgumentError(f"node={node!r} is not a trace of the line: 0 ≤ node < {nx}")
    if not nodes or len(set(nodes)) != len(nodes):
        raise InvalidArgumentError(f"nodes={nodes!r} must be distinct traces, at least one")
    probes = check_nonnegative_int("probes", probes)
    check = check_nonnegative_int("check", check)
    iterations = check_nonnegative_int("iterations", iterations)
    smooth = tuple(check_nonnegative_int("smooth", s) for s in smooth)
    if len(smooth) != 2:
        raise InvalidArgumentError(f"smooth={smooth!r} needs two half-widths (x, z)")
    gen = torch.Generator().manual_seed(seed)

    def products(v: torch.Tensor) -> torch.Tensor:
        out = apply(v)
        if tuple(out.shape) != tuple(v.shape):
            raise InvalidShapeError(f"apply returned {tuple(out.shape)} for {tuple(v.shape)}")
        return out.double()

    spikes = torch.zeros(len(nodes) * nz, nx, nz, dtype=torch.float64)
    for i, node in enumerate(nodes):
        spikes[i * nz + torch.arange(nz), node, torch.arange(nz)] = 1.0
    hit = products(spikes)
    columns = {node: hit[i * nz : (i + 1) * nz] for i, node in enumerate(nodes)}
    # columns[node][z'] = H e_(node, z'); its value at (node, z') is the exact diagonal there
    exact = {
        n_: c[torch.arange(nz), n_, torch.arange(nz)].clamp_min(0) for n_, c in columns.items()
    }
    # until probed: each trace takes the diagonal of the nearest node trace
    near = torch.tensor(nodes)[(torch.arange(nx)[:, None] - torch.tensor(nodes)).abs().argmin(1)]
    diag = torch.stack([exact[int(n_)] for n_ in near])
    node_diag = diag.max(0).values
    floor = DIAGONAL_FLOOR * float(diag.max().clamp_min(1e-300))
    z = y = None
    if probes:
        z = (torch.randint(0, 2, (probes, nx, nz), generator=gen) * 2 - 1).double()
        y = products(z)
    blocks, clipped = _symbol(columns, diag.clamp_min(floor).sqrt())
    for _ in range(iterations if probes else 0):
        approx = LateralStationaryHessian(blocks, diag.clamp_min(floor).sqrt())
        estimate = approx.diagonal() + (z * (y - approx(z))).mean(0)
        diag = torch.maximum(_smooth(estimate, smooth), LATERAL_FLOOR * node_diag).clamp_min(floor)
        for node in nodes:
            diag[node] = exact[node].clamp_min(floor)
        blocks, clipped = _symbol(columns, diag.sqrt())
    out = LateralStationaryHessian(blocks, diag.clamp_min(floor).sqrt())
    out.clipped = clipped
    out.products = len(nodes) * nz + probes + check
    if check:
        v = torch.randn(check, nx, nz, generator=gen, dtype=torch.float64)
        out.check_error = float(relative_operator_error(out, v, products(v)).mean())
    return out
