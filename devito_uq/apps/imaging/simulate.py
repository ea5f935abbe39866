"""``devito-uq simulate``: a true model and a surface survey → SEG-Y shots anyone can invert.

Files written to the output folder (atomically):

* ``shots.sgy`` — noisy shot records (``data = "nonlinear"``: the wave equation's; ``"born"``:
  the background's plus the Born data of the true perturbation, for which the linearized
  posterior is exact) on the data axis (``data_dt``), one trace per
  (shot, receiver), positions in the standard headers (:func:`devito_uq.io.write_shots`);
* ``acquisition.json`` — what SEG-Y cannot hold: the noise σ, the wavelet, the seed and the
  configuration (``devito-uq invert`` reads σ from it);
* ``true_model.sgy``, ``background.sgy`` — velocity images (km/s) on the inversion grid.

The noise is white, with σ set from ``snr_db`` against the *scattered* data (shots minus
the background model's shots), which is what the image is made of; against the full
records (direct wave included) the same σ reads as a much higher SNR. Under MPI each rank
models its own shots and rank 0 writes.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from devito_uq.apps.imaging.config import SimulateConfig
from devito_uq.apps.scenarios import (
    MARMOUSI_SPACING,
    load_marmousi,
    resample_window,
    smooth_background,
)
from devito_uq.errors import DevitoUQWarning, InvalidArgumentError
from devito_uq.inference import sigma_from_snr
from devito_uq.io import check_image, read_velocity, write_image, write_shots
from devito_uq.io._atomic import atomic_path
from devito_uq.io._files import check_input_file
from devito_uq.parallel import ShotDistribution, allreduce_sum, my_shots, rank_and_size
from devito_uq.physics import AcousticModel, AcousticModeling, BornModeling, Survey
from devito_uq.physics.model import squared_slowness
from devito_uq.physics.resample import TimeAxis

__all__ = ["VELOCITY", "idle_ranks", "true_velocity", "run_simulate"]

#: The quantity the velocity images state in their SEG-Y text header.
VELOCITY = "velocity, km/s"


def true_velocity(config: SimulateConfig) -> tuple[np.ndarray, tuple[float, float], str]:
    """The true velocity on the inversion grid.

    Parameters
    ----------
    config : SimulateConfig
        ``model`` (``"marmousi"`` or a SEG-Y image) and the window fields.

    Returns
    -------
    v : numpy.ndarray
        ``[nx, nz]`` float32 velocity, km/s.
    origin : tuple of float
        m.
    units : str
        What the model file held (:func:`devito_uq.io.read_velocity`).

    Raises
    ------
    InvalidArgumentError
        A missing model file or a window that leaves the model.
    """
    if config.model == "marmousi":
        v = load_marmousi()
        spacing, origin, units = (MARMOUSI_SPACING, MARMOUSI_SPACING), (0.0, 0.0), "km/s"
    else:
        check_input_file(config.model, "model", InvalidArgumentError)
        v, spacing, origin, units = read_velocity(config.model, config.model_units)
    if config.z_start != "auto":  # the window starts at a depth of the model's grid
        k = (config.z_start - origin[1]) / spacing[1]
        if abs(k - round(k)) > 1e-6 or not 0 <= round(k) < v.shape[1] - 1:
            raise InvalidArgumentError(
                f"z_start={config.z_start} m is not a depth of the model's grid "
                f"({origin[1]:g}, {origin[1] + spacing[1]:g}, ... "
                f"{origin[1] + spacing[1] * (v.shape[1] - 1):g} m)"
            )
        v, origin = v[:, round(k) :], (origin[0], origin[1] + round(k) * spacing[1])
    v, origin = resample_window(
        v, spacing, origin, config.x_start, config.width, config.depth, config.spacing
    )
    return v, origin, units


def idle_ranks(nshots: int, comm: Any = None) -> list[int]:
    """The ranks that own none of ``nshots`` shots; rank 0 names them in one warning line.

    Parameters
    ----------
    nshots : int
        The survey's shots.
    comm : mpi4py communicator or None
        The ranks sharing them (as :class:`~devito_uq.parallel.ShotDistribution` does).

    Returns
    -------
    list of int
        The idle ranks (empty when every rank has a shot).
    """
    dist = ShotDistribution(nshots, comm)
    idle = [r for r in range(dist.size) if not dist.shots_of(r)]
    if idle and dist.rank == 0:
        names = ", ".join(map(str, idle))
        warnings.warn(
            f"{dist.size} MPI ranks for {nshots} shots: rank{'s' * (len(idle) > 1)} {names} "
            f"{'have no shot and only wait' if len(idle) > 1 else 'has no shot and only waits'}; "
            "start at most "
            f"{nshots} ranks",
            DevitoUQWarning,
            stacklevel=2,
        )
    return idle


def run_simulate(
    config: SimulateConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """``devito-uq simulate``: the survey of ``config`` into ``out`` (rank 0 writes).

    Every check (window, velocities, time axes) runs before a solve.

    Parameters
    ----------
    config : SimulateConfig
        Model, window, acquisition, noise.
    out : str or os.PathLike
        The output folder.
    resume : bool
        Accepted for the CLI's uniform signature: a simulation is cheap and always
        rewritten.
    progress, figures : bool
        Accepted for the CLI's uniform signature.
    comm : mpi4py communicator or None
        Each rank models its own shots.

    Returns
    -------
    dict
        The acquisition summary (written to ``acquisition.json``).

    Raises
    ------
    InvalidArgumentError
        A bad value, model file, window or velocity range.
    """
    config.validate()
    t_start = time.perf_counter()
    rank, _ = rank_and_size(comm)
    v_true, origin, units = true_velocity(config)
    config.check_model_velocity(v_true, config.vmax, f"model {config.model!r}", units)
    spacing = (config.spacing, config.spacing)
    check_image(v_true.shape, spacing, origin, path=os.path.join(out, "true_model.sgy"))
    v0 = smooth_background(v_true, config.spacing, config.smoothing)
    model = AcousticModel(
        v_true.shape, spacing, origin, nbl=config.nbl, space_order=config.space_order
    )
    depths = {k: getattr(config, k) for k in ("src_depth", "rec_depth")}
    line = Survey.surface(
        model,
        config.nshots,
        config.nreceivers,
        t1=config.t1,
        f0_hz=config.f0,
        vmax=config.vmax,
        **{k: None if v == "auto" else v for k, v in depths.items()},
    )
    line.check_inside(model)  # depths inside the window, before any solve
    t0 = config.record_delay
    nt = int(np.floor((config.t1 - t0) / config.data_dt + 1e-9)) + 1
    survey = Survey.for_data(
        model,
        line.src_positions,
        line.rec_positions,
        TimeAxis(t0, config.data_dt, nt),
        config.vmax,
        f0_hz=config.f0,
    )
    os.makedirs(out, exist_ok=True)
    idle_ranks(survey.nshots, comm)
    mine = my_shots(survey.nshots, comm)
    F = AcousticModeling(model, survey)
    shape = (survey.nshots, survey.nt_data, survey.nreceivers[0])
    d, d0 = torch.zeros(shape), torch.zeros(shape)
    m_true, m0 = (torch.from_numpy(squared_slowness(v)) for v in (v_true, v0))
    with torch.no_grad():
        if mine:
            d0[mine] = F(m0, shots=mine)
            if config.data == "born":  # the linearized problem is then exact
                J = BornModeling(model, survey, m0)
                d[mine] = d0[mine] + J(m_true - m0, shots=mine)
            else:
                d[mine] = F(m_true, shots=mine)
    d, d0 = allreduce_sum(d, comm), allreduce_sum(d0, comm)
    sigma = sigma_from_snr(d - d0, config.snr_db)
    gen = torch.Generator().manual_seed(config.seed)
    noisy = d + sigma * torch.randn(shape, generator=gen)
    summary = {
        "noise_sigma": sigma,
        "snr_db_scattered": config.snr_db,
        "snr_db_full_records": float(10 * np.log10(float(d.pow(2).mean()) / sigma**2)),
        "grid": list(v_true.shape),
        "spacing_m": list(spacing),
        "origin_m": list(origin),
        "nshots": survey.nshots,
        "nreceivers": config.nreceivers,
        "data_dt_ms": config.data_dt,
        "nt_data": survey.nt_data,
        "record_delay_ms": t0,
        "src_depth_m": float(line.src_positions[0, 1]),
        "rec_depth_m": float(line.rec_positions[0][0, 1]),
        "solver_dt_ms": survey.dt,
        "wavelet": {"kind": "ricker", "f0_hz": config.f0},
        "velocity_range_km_s": [float(v_true.min()), float(v_true.max())],
        "model_units": units,
        "config": config.to_dict(),
        "provenance": (
            "Marmousi-II (Martin, Wiley and Marfurt, 2006), Allied Geophysics Laboratory, "
            "University of Houston"
            if config.model == "marmousi"
            else config.model
        ),
    }
    if rank == 0:
        write_shots(os.path.join(out, "shots.sgy"), survey, noisy)
        for name, v in (("true_model", v_true), ("background", v0)):
            write_image(os.path.join(out, f"{name}.sgy"), v, spacing, origin, VELOCITY)
        summary["wall_time_s"] = time.perf_counter() - t_start
        with atomic_path(os.path.join(out, "acquisition.json")) as tmp, open(tmp, "w") as fh:
            json.dump(summary, fh, indent=2)
    if comm is not None:
        comm.Barrier()  # the files are complete before any rank reads them
    return summary
