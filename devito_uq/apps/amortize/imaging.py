r"""The 2D amortized problem: linearized (Born) imaging of Marmousi-derived sections.

One fixed acquisition and one fixed smooth background ``m0`` ``[nx, nz]`` (s²/km²): those of
the held-out Marmousi-II window (``x_start``/``width``/``depth``/``spacing``/``smoothing``,
built exactly as :mod:`devito_uq.apps.imaging.simulate` builds them from
:mod:`devito_uq.apps.scenarios`, water kept). The
unknown is the image ``δm`` around ``m0``; the data are Born data ``d = J δm + σ ε``
(``J`` the Born operator at ``m0``, ``M`` the live-trace mask) and the condition of the
amortized posterior is the migrated image

.. math::
    y = J^\top M d = H\,\delta m + \sigma J^\top M \varepsilon, \qquad H = J^\top M J,

on the model grid, ``[1, nx, nz]``. ``σ`` is set once from ``snr_db`` against the held-out
section's Born data (as ``devito-uq simulate`` does) and is the same for every pair.

Training models are the residuals ``δm = m(v) − m(smooth(v))`` of random crops ``v`` of
Marmousi-II of the window's size, cut at x positions whose crops (with their warp and a
margin of two cells) never overlap the held-out window, then augmented: mirrored in x, a
smooth random displacement of at most ``augment_warp`` m, and an amplitude factor
log-uniform in ``[1/(1+a), 1+a]``. With ``augment_depth`` the crops' tops are drawn
uniformly in ``[0, augment_depth]`` m (deeper Marmousi-II structure: the distribution of
``max|δm|`` over all windows of the model, not only the surface ones) and ``δm`` is zeroed
in the survey's water, which the fixed background gives. ``smooth`` keeps the water exact
(δm = 0 there), as for the held-out truth ``δm_true = m_true − m0``.

Conditions (``condition``):

* ``"normal"`` (default): ``H`` is assembled once, one column per grid point (one Born and
  one adjoint solve per shot and column, each shot's ``H_s`` kept so that shot subsets are
  exact too); then ``y = H δm + σ H^{1/2} ξ`` with ``ξ ~ N(0, I)``: ``σ J^\top M ε`` is
  Gaussian with covariance ``σ² H``, so the pairs have exactly the distribution of the
  explicit simulation and cost no solve (41×21, 8 shots: 20,672 solves once, against 24
  per pair: cheaper from 862 pairs on).
* ``"explicit"``: ``J`` and ``Jᵀ`` per pair (3 solves per shot and pair).

Solves are counted as the solver counts them: a Born solve is 2 (the background and the
scattered wavefield in one time loop), an adjoint 1, a forward 1.

The flow works in the latent ``x = δm / prior_std``
(:class:`~devito_uq.inference.Parameterization` around 0 with scale ``prior_std``): the
scale of the per-survey VI's Gaussian prior, so both flows live on comparable numbers. With
``residual`` (the default) it models ``w = Σ^{-1/2}(x − P y/prior_std)`` instead: the
residual around the exact posterior under the per-survey Gaussian prior, whose mean ``P y``
and covariance ``Σ`` come from the survey's own ``JᵀMJ`` and σ — the training survey's in
training, a shifted survey's (a shot subset, dead traces, another noise level) through
``set_geometry``; the flow learns how the crop prior departs from that answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from typing import Any

import numpy as np
import torch
from scipy.ndimage import map_coordinates
from tqdm.auto import tqdm

from devito_uq.apps.amortize.imaging_config import ImagingAmortizeConfig
from devito_uq.apps.amortize.imaging_posterior import (
    deconvolving,
    gaussian_residual,
    gaussian_residual_flow,
    one_padding_flow,
)
from devito_uq.apps.amortize.imaging_study import run_study
from devito_uq.apps.imaging.problem import pde_solves
from devito_uq.apps.scenarios import (
    MARMOUSI_SHAPE,
    MARMOUSI_SPACING,
    antialiased_slowness,
    load_marmousi,
    resample_window,
    smooth_background,
    water_mask,
)
from devito_uq.errors import InvalidArgumentError
from devito_uq.flows import ConditionalImageFlow, ImageSummary
from devito_uq.inference import CorrelatedGaussianPrior, Parameterization, sigma_from_snr
from devito_uq.inference.amortized import AmortizedPosterior
from devito_uq.parallel import rank_and_size
from devito_uq.physics import AcousticModel, BornModeling, Survey
from devito_uq.physics.resample import TimeAxis

__all__ = ["ImagingSetting", "build_setting", "crop_velocity"]

#: Cells of the grid between a training crop (warp included) and the held-out window: the
#: anti-alias filter and the linear interpolation reach about 1.5 cells.
_MARGIN_CELLS = 2
#: The fields of ImagingAmortizeConfig the training set depends on (besides n_train, seed...).
_IDENTITY = (
    "x_start", "width", "depth", "spacing", "smoothing", "nshots", "nreceivers", "t1", "f0",
    "data_dt", "vmax", "nbl", "space_order", "snr_db", "condition", "augment_flip",
    "augment_amplitude", "augment_warp", "augment_depth",
)  # fmt: skip
# Assembled normal operators, one per acquisition: simulate, train and study of one
# process (``amortize all``) assemble it once.
_NORMAL_CACHE: dict[str, tuple[torch.Tensor, dict]] = {}


@functools.lru_cache(maxsize=4)
def _filtered_slowness(spacing: float) -> np.ndarray:
    """Marmousi-II slowness ``[1601, 401]`` (s/km) anti-aliased for ``spacing`` m, exactly
    as :func:`devito_uq.apps.scenarios.resample_window` filters it."""
    return antialiased_slowness(load_marmousi(), (MARMOUSI_SPACING, MARMOUSI_SPACING), spacing)


def crop_velocity(
    x_start: float,
    shape: tuple[int, int],
    spacing: float,
    flip: bool = False,
    ux: np.ndarray | None = None,
    uz: np.ndarray | None = None,
    z_start: float = 0.0,
) -> np.ndarray:
    """A Marmousi-II crop ``[nx, nz]`` (km/s) at ``x_start`` m (top at ``z_start`` m),
    resampled to ``spacing`` (identical to ``resample_window`` without ``flip``/``ux``/``uz``
    and ``z_start = 0``), its sample points displaced by ``ux``/``uz`` ``[nx, nz]`` (m), then
    mirrored in x with ``flip``."""
    nx, nz = shape
    xi = (x_start + spacing * np.arange(nx))[:, None] + (0.0 if ux is None else ux)
    zi = (z_start + spacing * np.arange(nz))[None, :] + (0.0 if uz is None else uz)
    xi, zi = np.broadcast_arrays(xi / MARMOUSI_SPACING, zi / MARMOUSI_SPACING)
    s = map_coordinates(_filtered_slowness(float(spacing)), [xi, zi], order=1, mode="nearest")
    v = (1.0 / s).astype(np.float32)
    return np.ascontiguousarray(v[::-1]) if flip else v


def _image(v: np.ndarray, config: ImagingAmortizeConfig) -> np.ndarray:
    """``δm = m(v) − m(smooth(v))`` float64 ``[nx, nz]`` (s²/km²), water kept exact."""
    v0 = smooth_background(v, config.spacing, config.smoothing)
    return 1.0 / v.astype(np.float64) ** 2 - 1.0 / v0.astype(np.float64) ** 2


class ImagingSetting:
    """The amortized imaging problem of one configuration (the protocol of
    :mod:`devito_uq.apps.amortize.run`); PDE work is done lazily, on first need."""

    def __init__(self, config: ImagingAmortizeConfig, comm: Any = None) -> None:
        self.config = config
        self.comm = comm
        nx = int(np.floor(config.width / config.spacing + 1e-9)) + 1
        nz = int(np.floor(config.depth / config.spacing + 1e-9)) + 1
        self.shape = (nx, nz)
        self.intervals = self._crop_intervals()

    # -- protocol -----------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {"problem": "imaging", "format": 1, **{k: getattr(c, k) for k in _IDENTITY}}

    def simulate_shard(self, index: int, count: int, generator: torch.Generator) -> dict:
        """``count`` pairs ``{"model": δm [count, nx, nz], "condition": Jᵀd [count, 1, nx,
        nz]}`` (float32), every random number from ``generator``."""
        dm, _ = self.draw_models(count, generator)
        return {"model": dm.float(), "condition": self.conditions(dm, generator).float()}

    def make_posterior(self):
        """The untrained :class:`AmortizedPosterior`: an :class:`ImageSummary` CNN of the
        condition feeding a :class:`ConditionalImageFlow` over ``δm/prior_std``; weights
        from ``config.seed`` (the caller's random state is left alone). With
        ``deconvolve`` the CNN sees the least-squares image (``imaging_posterior.deconvolving``);
        with ``residual`` (the default) the flow models the residual around the survey's
        exact Gaussian-prior posterior, whitened by its covariance
        (``imaging_posterior.gaussian_residual``): with ``w ~ N(0, I)`` it is that posterior."""
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            summary = ImageSummary(1, c.summary_features, hidden=c.summary_hidden)
            flow_cls = one_padding_flow(ConditionalImageFlow)
            if c.residual:
                flow_cls = gaussian_residual_flow(flow_cls)
            flow = flow_cls(
                self.shape,
                c.summary_features,
                kind=c.flow_kind,
                levels=c.flow_levels,
                steps=c.flow_steps,
                hidden=c.flow_hidden,
            )
        g = Parameterization(torch.zeros(self.shape), c.prior_std)
        cls = deconvolving(AmortizedPosterior) if c.deconvolve else AmortizedPosterior
        if c.residual:
            cls = gaussian_residual(cls)
        post = cls(flow, summary, g, condition_shape=(1, *self.shape))
        if c.deconvolve:
            post.setting = self  # fills the operator on first use (training)
        return post

    def gaussian_prior(self) -> CorrelatedGaussianPrior:
        """The per-survey VI's prior: correlated Gaussian around 0 (``prior_std``,
        ``correlation_length``) on the grid."""
        c = self.config
        zero = torch.zeros(self.shape)
        return CorrelatedGaussianPrior(zero, c.prior_std, c.correlation_length, spacing=c.spacing)

    def least_squares_operator(self) -> torch.Tensor:
        """``P = (H/σ² + C⁻¹)⁻¹/σ²`` ``[n, n]`` float64: ``P Jᵀd`` is the mean of the exact
        posterior under the per-survey VI's Gaussian prior ``C`` (the regularized
        least-squares image); computed in whitened form ``L (I + LᵀHL/σ²)⁻¹ Lᵀ/σ²``."""
        n = math.prod(self.shape)
        sqrt = self.gaussian_prior().sqrt()
        eye = torch.eye(n, dtype=torch.float64)
        L = sqrt.matvec(eye.reshape(n, *self.shape)).reshape(n, n).T
        A = eye + L.T @ self.normal_matrices().sum(0) @ L / self.sigma**2
        return L @ torch.linalg.solve(A, L.T) / self.sigma**2

    def study(self, posterior, out: str, progress: bool = True, figures: bool = True, comm=None):
        """:func:`~devito_uq.apps.amortize.imaging_study.run_study` on rank 0 (the study's
        solves are few; other ranks return ``{}`` rather than write the same files)."""
        if rank_and_size(comm)[0] != 0:
            return {}
        return run_study(self, posterior, out, progress=progress, figures=figures)

    # -- acquisition ----------------------------------------------------------------------------

    @functools.cached_property
    def acquisition(self) -> dict[str, Any]:
        """``model``, ``survey`` (as ``devito-uq simulate`` builds it), ``mask`` ``[shot, 1,
        receiver]``, ``v_true``/``v0`` (km/s), ``m0``/``dm_true`` ``[nx, nz]`` (s²/km²),
        ``origin``/``spacing`` (m). No solve."""
        c = self.config
        dx = (MARMOUSI_SPACING, MARMOUSI_SPACING)
        v, origin = resample_window(
            load_marmousi(), dx, (0.0, 0.0), c.x_start, c.width, c.depth, c.spacing
        )
        v0 = smooth_background(v, c.spacing, c.smoothing)
        spacing = (c.spacing, c.spacing)
        model = AcousticModel(v.shape, spacing, origin, nbl=c.nbl, space_order=c.space_order)
        line = Survey.surface(model, c.nshots, c.nreceivers, t1=c.t1, f0_hz=c.f0, vmax=c.vmax)
        nt = int(np.floor(c.t1 / c.data_dt + 1e-9)) + 1
        axis = TimeAxis(0.0, c.data_dt, nt)
        survey = Survey.for_data(
            model, line.src_positions, line.rec_positions, axis, c.vmax, f0_hz=c.f0
        )
        m_true = torch.from_numpy(1.0 / v.astype(np.float64) ** 2)
        m0 = torch.from_numpy(1.0 / v0.astype(np.float64) ** 2)
        return {
            "model": model,
            "survey": survey,
            "mask": torch.from_numpy(survey.mask())[:, None, :],
            "v_true": v,
            "v0": v0,
            "m0": m0.float(),
            "dm_true": (m_true - m0).float(),
            "origin": tuple(origin),
            "spacing": spacing,
        }

    @functools.cached_property
    def born(self):
        """``J``: the Born operator at ``m0`` over every shot (:class:`BornModeling`)."""
        a = self.acquisition
        return BornModeling(a["model"], a["survey"], a["m0"])

    @functools.cached_property
    def sigma(self) -> float:
        """Noise σ from ``snr_db`` against the held-out Born data ``J δm_true`` (all traces,
        as ``devito-uq simulate``): ``nshots`` Born solves, once."""
        with torch.no_grad():
            d = self.born(self.acquisition["dm_true"])
        return sigma_from_snr(d, self.config.snr_db)

    @functools.cached_property
    def water(self) -> np.ndarray:
        """``[nx, nz]`` bool: the water of the fixed background (known, δm = 0 there)."""
        return water_mask(self.acquisition["v0"])

    # -- training models --------------------------------------------------------------------------

    def _crop_intervals(self) -> list[tuple[float, float]]:
        """Allowed crop starts (m): crops, warp and margin included, inside Marmousi-II and
        clear of the held-out window ``[x_start, x_start + width]``."""
        c = self.config
        extent = MARMOUSI_SPACING * (MARMOUSI_SHAPE[0] - 1)
        width = (self.shape[0] - 1) * c.spacing
        reach = c.augment_warp + _MARGIN_CELLS * c.spacing
        out = []
        lo, hi = c.augment_warp, min(c.x_start - width - reach, extent - width - c.augment_warp)
        if hi > lo:
            out.append((lo, hi))
        lo, hi = max(c.x_start + width + reach, c.augment_warp), extent - width - c.augment_warp
        if hi > lo:
            out.append((lo, hi))
        bottom = (
            MARMOUSI_SPACING * (MARMOUSI_SHAPE[1] - 1)
            - (self.shape[1] - 1) * c.spacing
            - c.augment_warp
        )
        if c.augment_depth > bottom:
            raise InvalidArgumentError(
                f"augment_depth={c.augment_depth} m takes crops of depth={c.depth} m below "
                f"Marmousi-II (3000 m, warp included); at most {bottom:g} m"
            )
        if not out:
            raise InvalidArgumentError(
                f"no training crop of width={c.width} m fits in Marmousi-II (0..{extent:g} m) "
                f"clear of the held-out window at x_start={c.x_start} m; move or shrink it"
            )
        return out

    def draw_models(self, count: int, generator: torch.Generator):
        """``count`` training images ``δm`` ``[count, nx, nz]`` float64 (s²/km²) and the crop
        starts (m), every random number drawn from ``generator``."""
        c = self.config
        nx, nz = self.shape
        lengths = [hi - lo for lo, hi in self.intervals]
        X = c.spacing * np.arange(nx)[:, None] / max(c.width, c.spacing)
        Z = c.spacing * np.arange(nz)[None, :] / max(c.depth, c.spacing)
        out, starts = np.zeros((count, nx, nz)), []
        for k in range(count):
            u = torch.rand(10, generator=generator, dtype=torch.float64).numpy()
            pos = u[0] * sum(lengths)
            start = self.intervals[0][0] + pos
            if len(lengths) > 1 and pos >= lengths[0]:
                start = self.intervals[1][0] + pos - lengths[0]
            disp = []
            for j in (2, 6):  # a smooth plane-wave displacement in x, then in z
                amp, kx, kz, phase = u[j], u[j + 1], u[j + 2], 2 * math.pi * u[j + 3]
                disp.append(c.augment_warp * amp * np.sin(2 * math.pi * (kx * X + kz * Z) + phase))
            flip = bool(c.augment_flip and u[1] < 0.5)
            gain = torch.rand((), generator=generator, dtype=torch.float64).item()
            z_start = 0.0
            if c.augment_depth > 0:  # drawn only then: depth 0 keeps the former stream
                z_start = c.augment_depth * torch.rand((), generator=generator).item()
            v = crop_velocity(start, self.shape, c.spacing, flip, disp[0], disp[1], z_start)
            scale = math.exp((2 * gain - 1) * math.log1p(c.augment_amplitude))
            out[k] = scale * _image(v, c)
            if z_start > 0:  # the survey's water (known, δm = 0 there) stays water
                out[k][self.water] = 0.0
            starts.append(float(start))
        return torch.from_numpy(out), starts

    # -- conditions -------------------------------------------------------------------------------

    def shot_subset(self, fraction: float) -> list[int]:
        """``round(fraction·nshots)`` (≥ 1) shots spread evenly over the line."""
        n = self.config.nshots
        k = max(1, int(round(fraction * n)))
        return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})

    def normal_matrices(self, progress: bool = False, mask: torch.Tensor | None = None):
        """``H_s = J_sᵀ M_s J_s`` ``[nshots, n, n]`` float64 (n = nx·nz), symmetrized: one
        Born and one adjoint solve per shot and grid point, cached per acquisition (and
        ``mask``) in this process. ``mask`` ``[nshots, 1, receivers]`` (default: the
        survey's live traces) zeroes traces, e.g. a survey's dead receivers. Under MPI every
        rank assembles it alone when it first needs it (ranks without shards never do; no
        collective call, hence no deadlock)."""
        key = json.dumps(self.identity(), sort_keys=True)
        if mask is not None:
            key += ":" + hashlib.sha256(mask.float().numpy().tobytes()).hexdigest()
        if key in _NORMAL_CACHE:
            return _NORMAL_CACHE[key][0]
        s0, t0 = pde_solves(), time.perf_counter()
        n, nshots = math.prod(self.shape), self.config.nshots
        mask = (self.acquisition["mask"] if mask is None else mask).float()
        H = torch.zeros(nshots, n, n, dtype=torch.float64)
        chunk = 64
        mine = range(nshots)
        bar = tqdm(total=len(mine) * n, desc="assembling JᵀMJ", disable=not progress, leave=False)
        for s in mine:
            for j in range(0, n, chunk):
                k = min(chunk, n - j)
                e = torch.zeros(k, n)
                e[torch.arange(k), torch.arange(j, j + k)] = 1.0
                u = e.reshape(k, *self.shape).requires_grad_(True)
                w = self.born(u, shots=[s]) * mask[s : s + 1]
                (g,) = torch.autograd.grad(0.5 * w.pow(2).sum(), u)
                H[s, :, j : j + k] = g.reshape(k, n).T.double()
                bar.update(k)
        bar.close()
        H = 0.5 * (H + H.transpose(1, 2))
        cost = {"seconds": time.perf_counter() - t0, "pde_solves": pde_solves() - s0}
        _NORMAL_CACHE[key] = (H, cost)
        return H

    def dead_trace_mask(self, keep: float, generator: torch.Generator) -> torch.Tensor:
        """``[nshots, 1, receivers]`` the survey's live-trace mask with all but
        ``round(keep·live)`` (≥ 1) live traces of every shot zeroed at random (dead
        receivers), drawn from ``generator``."""
        mask = self.acquisition["mask"].clone()
        for s in range(mask.shape[0]):
            live = torch.nonzero(mask[s, 0]).flatten()
            k = max(1, int(round(keep * live.numel())))
            dead = live[torch.randperm(live.numel(), generator=generator)[k:]]
            mask[s, 0, dead] = False
        return mask

    def normal_cost(self) -> dict[str, float]:
        """Wall time and PDE solves of the assembly of :meth:`normal_matrices`."""
        self.normal_matrices()
        return dict(_NORMAL_CACHE[json.dumps(self.identity(), sort_keys=True)][1])

    @functools.lru_cache(maxsize=8)  # noqa: B019 (one setting per process and config)
    def noise_factor(self, shots: tuple[int, ...]) -> torch.Tensor:
        """``L`` ``[n, n]`` with ``L Lᵀ = H`` over ``shots`` (eigenvalues clipped at 0)."""
        lam, vec = torch.linalg.eigh(self.normal_matrices()[list(shots)].sum(0))
        return vec * lam.clamp_min(0).sqrt()

    def conditions(
        self,
        dm: torch.Tensor,
        generator: torch.Generator,
        sigma: float | None = None,
        shots: list[int] | None = None,
    ) -> torch.Tensor:
        """Migrated images ``Jᵀ M (J δm + σ ε)`` ``[k, 1, nx, nz]`` float64 of ``dm [k, nx,
        nz]`` over ``shots`` (default all) at noise ``sigma`` (default :attr:`sigma`)."""
        sigma = self.sigma if sigma is None else float(sigma)
        shots = list(range(self.config.nshots)) if shots is None else list(shots)
        k, n = dm.shape[0], math.prod(self.shape)
        if self.config.condition == "normal":
            H = self.normal_matrices()[shots].sum(0)
            xi = torch.randn(n, k, generator=generator, dtype=torch.float64)
            y = H @ dm.double().reshape(k, n).T + sigma * self.noise_factor(tuple(shots)) @ xi
            return y.T.reshape(k, 1, *self.shape)
        return self.migrate(dm, generator, sigma, shots)

    def migrate(
        self,
        dm: torch.Tensor,
        generator: torch.Generator,
        sigma: float | None = None,
        shots: list[int] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`conditions` by explicit calls: ``d = J δm + σ ε`` (``ε`` from ``generator``),
        then ``Jᵀ M d``: one Born and one adjoint solve per shot and image (``mask``
        ``[nshots, 1, receivers]``: the traces recorded, default the survey's live ones)."""
        sigma = self.sigma if sigma is None else float(sigma)
        shots = list(range(self.config.nshots)) if shots is None else list(shots)
        mask = (self.acquisition["mask"] if mask is None else mask)[shots].float()
        u = dm.float().requires_grad_(True)
        d = self.born(u, shots=shots)
        eps = torch.randn(d.shape, generator=generator, dtype=torch.float64).float()
        r = (d.detach() + sigma * eps) * mask
        (y,) = torch.autograd.grad(d, u, grad_outputs=r)
        return y.double()[:, None]


def build_setting(config: Any, comm: Any = None) -> ImagingSetting:
    """The protocol object of :mod:`devito_uq.apps.amortize.run` for ``problem="imaging"``."""
    return ImagingSetting(config.for_problem().validate(), comm)
