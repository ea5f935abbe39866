"""The imaging posterior: how it is built, saved to ``posterior.pt`` and rebuilt.

The flow works in the latent ``x`` of ``m = g(MAP + A x)`` (:func:`laplace_parameterization`:
``A`` the low-rank Laplace factor, ``g`` the FWI bounds); :func:`make_flow` builds the 2D
flow over ``x``. ``posterior.pt`` holds the flow's weights and settings, the Laplace factor,
the bounds, the background, the truth when known and the illumination, so that
:func:`load_posterior` rebuilds the :class:`ImagingPosterior` from the file alone and draws
new samples with no PDE solve (``devito-uq summarize``, or a later run's ``prior = "flow"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from devito_uq.errors import CheckpointError
from devito_uq.flows import ImageFlow
from devito_uq.inference import LaplaceParameterization
from devito_uq.inference.laplace import sqrt_from_state
from devito_uq.io.checkpoint import load_checkpoint, save_checkpoint
from devito_uq.validation import check_allocation

__all__ = [
    "FLOW_FIELDS",
    "ImagingPosterior",
    "image_flow",
    "laplace_parameterization",
    "load_posterior",
    "make_flow",
    "save_posterior",
]

#: The config fields that define the flow (saved in ``posterior.pt`` as ``flow_config``).
FLOW_FIELDS = ("flow", "flow_levels", "flow_steps", "flow_hidden")

_KEYS = ("flow", "flow_config", "reference", "sqrt", "eigenvalues", "eigenvectors", "bounds")
_KEYS += ("kind", "grid", "m0", "illumination", "map")


@dataclass
class ImagingPosterior:
    """A trained imaging posterior: ``m = g(T(z))``, ``[nx, nz]`` models.

    Attributes
    ----------
    flow : torch.nn.Module
        The flow ``T`` over the latent ``x`` (``sample(n) -> [n, nx, nz]``).
    parameterization : torch.nn.Module
        ``g``: latent → unknown (:class:`~devito_uq.inference.LaplaceParameterization`).
    kind : str
        ``"born"`` (the unknown is ``δm``, s²/km²) or ``"fwi"`` (``m``, s²/km²).
    m0 : torch.Tensor
        ``[nx, nz]`` background squared slowness, s²/km².
    truth : torch.Tensor or None
        ``[nx, nz]`` true unknown, when known.
    illumination : torch.Tensor
        ``[nx, nz]`` Gauss–Newton diagonal ``diag(JᵀJ)/σ²``, 1/(s²/km²)².
    m_map : torch.Tensor
        ``[nx, nz]`` the MAP of the unknown.
    spacing, origin : tuple of float
        The grid, m.
    """

    flow: Any
    parameterization: Any
    kind: str
    m0: torch.Tensor
    truth: torch.Tensor | None
    illumination: torch.Tensor
    m_map: torch.Tensor
    spacing: tuple[float, float]
    origin: tuple[float, float]

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Samples of the unknown from a fixed seed (the caller's random state is kept).

        Parameters
        ----------
        n : int
            Number of samples.
        seed : int
            Seed of the draw.

        Returns
        -------
        torch.Tensor
            ``[n, nx, nz]`` on the CPU.
        """
        out = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for k in range(0, n, 64):
                x = self.flow.sample(min(64, n - k))
                out.append(self.parameterization(x)[0].cpu())
        return torch.cat(out)

    def to_output_unit(self, u: torch.Tensor) -> torch.Tensor:
        """The unknown in the unit the files use: ``δm`` as is; ``m`` → velocity, km/s."""
        return u if self.kind == "born" else u.double().rsqrt().float()


def image_flow(
    shape: tuple[int, int], flow: str, flow_levels: int, flow_steps: int, flow_hidden: int
) -> nn.Module:
    """The 2D flow over the latent image (:class:`~devito_uq.flows.ImageFlow`, any grid).

    Parameters
    ----------
    shape : tuple of int
        ``(nx, nz)``.
    flow, flow_levels, flow_steps, flow_hidden
        The :data:`FLOW_FIELDS` of the config: kind (``"hint"``/``"glow"``), multiscale
        levels, steps per level, hidden channels.

    Returns
    -------
    ImageFlow
        With ActNorm left at the identity.
    """
    image = ImageFlow(shape, kind=flow, levels=flow_levels, steps=flow_steps, hidden=flow_hidden)
    # The Laplace-whitened latent is already ~N(0, I): ActNorm stays at the identity rather
    # than fitting the first VI batch (2 samples), whose noisy per-channel scales became
    # stripes with the period of the squeeze in the std maps.
    image.net.skip_data_init()
    return image


def make_flow(config: Any, shape: tuple[int, int]) -> nn.Module:
    """:func:`image_flow` with the :data:`FLOW_FIELDS` of ``config``.

    Parameters
    ----------
    config : InvertConfig or ImagingConfig
        Any object with the :data:`FLOW_FIELDS` as attributes.
    shape : tuple of int
        ``(nx, nz)``.

    Returns
    -------
    ImageFlow
    """
    check_vi_memory(config, shape)
    return image_flow(shape, **{k: getattr(config, k) for k in FLOW_FIELDS})


def check_vi_memory(config: Any, shape: tuple[int, int]) -> None:
    """Refuse a VI batch whose flow activations cannot fit, before any solve.

    A lower bound: ``batch_size`` images of ``flow_hidden`` float32 channels kept for
    backward in each of the ``flow_levels × flow_steps`` couplings, twice (forward value
    and gradient). The PDE solves need no such check: their saved wavefields are cut
    into chunks under ``max_wavefield_bytes``.

    Parameters
    ----------
    config : InvertConfig or ImagingConfig
        ``batch_size``, ``flow_hidden``, ``flow_steps``, ``flow_levels``.
    shape : tuple of int
        ``(nx, nz)``.

    Raises
    ------
    InsufficientMemoryError
        With the bytes it implies and those available.
    """
    nx, nz = shape
    layers = config.flow_hidden * config.flow_steps * config.flow_levels
    check_allocation(
        f"VI with batch_size={config.batch_size} on the {nx} x {nz} grid (the flow's "
        f"activations: {config.flow_hidden} channels x {config.flow_steps} steps x "
        f"{config.flow_levels} levels)",
        config.batch_size * nx * nz * layers * 4 * 2,
    )


def laplace_parameterization(
    reference: torch.Tensor,
    base: dict[str, Any],
    bounds: tuple[float, float] | None = None,
) -> LaplaceParameterization:
    """``m = g(reference + A x)`` with the low-rank Laplace factor ``A`` of ``base``.

    Parameters
    ----------
    reference : torch.Tensor
        ``[nx, nz]`` centre (the MAP), clamped strictly inside ``bounds``.
    base : dict
        ``sqrt`` (the prior square root's state), ``eigenvalues`` ``[rank]``,
        ``eigenvectors`` ``[rank, nx, nz]`` and optionally ``residual`` (the shrink of the
        directions beyond the rank, default 1).
    bounds : tuple of float or None
        The FWI bounds ``(lower, upper)`` of ``m`` (s²/km²); ``None`` for Born.

    Returns
    -------
    LaplaceParameterization
    """
    sqrt = sqrt_from_state(base["sqrt"])
    lam, vec = base["eigenvalues"], base["eigenvectors"]
    res = float(base.get("residual", 1.0))
    if bounds is None:
        return LaplaceParameterization(reference, sqrt, lam, vec, residual=res)
    lo, hi = bounds
    gap = 1e-4 * (hi - lo)  # the MAP may sit on a bound to round-off
    ref = reference.clamp(lo + gap, hi - gap)
    return LaplaceParameterization(ref, sqrt, lam, vec, lower=lo, upper=hi, residual=res)


def save_posterior(
    out: str, vi: Any, problem: Any, base: dict[str, Any], config: Any, write: bool = True
) -> ImagingPosterior:
    """Write ``posterior.pt`` (when ``write``) and return the :class:`ImagingPosterior`.

    Parameters
    ----------
    out : str
        The output folder.
    vi : VariationalPosterior
        The trained VI (its ``flow`` and ``parameterization``).
    problem : ImagingProblem
        Its ``kind``, ``bounds``, ``m0``, ``truth``, ``spacing`` and ``origin``.
    base : dict
        The MAP cache of the run: ``map``, ``illumination``, ``sqrt``, ``eigenvalues``,
        ``eigenvectors``, ``residual``.
    config : InvertConfig
        Its :data:`FLOW_FIELDS`.
    write : bool
        Write the file (rank 0 under MPI).

    Returns
    -------
    ImagingPosterior
    """
    state = {
        "flow": {k: v.cpu() for k, v in vi.flow.state_dict().items()},
        "flow_config": {k: getattr(config, k) for k in FLOW_FIELDS},
        "reference": base["map"],
        "sqrt": base["sqrt"],
        "eigenvalues": base["eigenvalues"],
        "eigenvectors": base["eigenvectors"],
        "residual": base.get("residual", 1.0),
        "bounds": list(problem.bounds) if problem.bounds else None,
        "kind": problem.kind,
        "grid": {"spacing": list(problem.spacing), "origin": list(problem.origin)},
        "m0": problem.m0,
        "truth": problem.truth,
        "illumination": base["illumination"],
        "map": base["map"],
    }
    if write:
        save_checkpoint(os.path.join(out, "posterior.pt"), state)
    return ImagingPosterior(
        vi.flow,
        vi.parameterization,
        problem.kind,
        problem.m0,
        problem.truth,
        base["illumination"],
        base["map"],
        tuple(problem.spacing),
        tuple(problem.origin),
    )


def load_posterior(path: str | os.PathLike) -> ImagingPosterior:
    """Rebuild the posterior of ``posterior.pt`` (hash-checked, no pickle).

    Parameters
    ----------
    path : str or os.PathLike
        The file :func:`save_posterior` wrote.

    Returns
    -------
    ImagingPosterior

    Raises
    ------
    CheckpointError
        The file is missing, damaged or not an imaging posterior.
    """
    s = load_checkpoint(path, required=_KEYS)
    try:
        flow = image_flow(tuple(s["m0"].shape), **s["flow_config"])
        flow.load_state_dict(s["flow"])
        bounds = tuple(s["bounds"]) if s["bounds"] else None
        g = laplace_parameterization(s["reference"], s, bounds)
        grid = s["grid"]
        return ImagingPosterior(
            flow, g, s["kind"], s["m0"], s.get("truth"), s["illumination"], s["map"],
            tuple(grid["spacing"]), tuple(grid["origin"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{os.fspath(path)!r} is not an imaging posterior: {exc}") from None
