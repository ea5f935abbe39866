"""2D seismic imaging UQ from SEG-Y shots: ``devito-uq simulate|invert|imaging|summarize|info``.

The same shape as :mod:`devito_uq.apps.avp`: ``config.py`` (every knob), ``problem.py``
(grid, shots read per rank, Born or nonlinear operators, prior), ``curvature.py``
(Gauss–Newton products, illumination, the MAP and Laplace baseline), ``posterior.py`` (the
flow and its parameterization: build, save, load), ``run.py`` (MAP, VI, checkpoints),
``outputs.py`` and ``figures.py`` (SEG-Y images, PNGs, ``summary.json``,
``history.csv``), plus ``simulate.py`` (synthetic surveys from
:mod:`devito_uq.apps.scenarios`) and ``tools.py`` (``summarize``, ``info``).

``devito-uq invert --amortized PATH`` is served by :mod:`devito_uq.apps.amortize` (the
CLI dispatches it there): this package never imports that one.

    devito-uq imaging --out outputs/imaging            # Marmousi default case (make imaging)
    devito-uq simulate --out run1 --nshots 12          # SEG-Y shots + models into run1/
    mpiexec -n 4 devito-uq invert --out run1 --problem fwi
    devito-uq summarize --out run1 --n-samples 1000
    devito-uq info run1/shots.sgy
"""

from __future__ import annotations

from devito_uq._lazy import lazy_exports
from devito_uq.apps import Command
from devito_uq.apps.imaging.config import (
    ImagingConfig,
    InfoConfig,
    InvertConfig,
    SimulateConfig,
    SummarizeConfig,
)

_LAZY = {
    "ImagingProblem": "devito_uq.apps.imaging.problem",
    "build_problem": "devito_uq.apps.imaging.problem",
    "gauss_newton_diagonal": "devito_uq.apps.imaging.curvature",
    "load_marmousi": "devito_uq.apps.scenarios",
    "make_flow": "devito_uq.apps.imaging.posterior",
    "run_simulate": "devito_uq.apps.imaging.simulate",
    "run_invert": "devito_uq.apps.imaging.run",
    "run_imaging": "devito_uq.apps.imaging.run",
    "load_posterior": "devito_uq.apps.imaging.posterior",
    "run_summarize": "devito_uq.apps.imaging.tools",
    "run_info": "devito_uq.apps.imaging.tools",
}

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    _LAZY,
    (
        "ImagingConfig",
        "InfoConfig",
        "InvertConfig",
        "SimulateConfig",
        "SummarizeConfig",
        "COMMANDS",
    ),
)

_REPORT = ("metrics", "linearization_error", "vi", "time_s")

#: The ``devito-uq`` sub-commands of this application.
COMMANDS = (
    Command(
        name="imaging",
        help="2D imaging UQ on Marmousi-II: simulate, then invert (short schedule unless --full)",
        config=ImagingConfig,
        preset="short",
        full_preset="full",
        run="devito_uq.apps.imaging.run:run_imaging",
        default_out="outputs/imaging",
        report_keys=_REPORT,
        mpi=True,
    ),
    Command(
        name="simulate",
        help="model + acquisition -> SEG-Y shots, true and background models",
        config=SimulateConfig,
        preset="short",
        run="devito_uq.apps.imaging.simulate:run_simulate",
        default_out="outputs/imaging",
        report_keys=("noise_sigma", "nshots", "grid", "solver_dt_ms"),
        mpi=True,
    ),
    Command(
        name="invert",
        help="SEG-Y shots + background model -> posterior (Born image or FWI velocity)",
        config=InvertConfig,
        preset="short",
        run="devito_uq.apps.imaging.run:run_invert",
        default_out="outputs/imaging",
        report_keys=_REPORT,
        mpi=True,
    ),
    Command(
        name="summarize",
        help="posterior.pt -> mean, std, 5/50/95 % quantiles (SEG-Y, PNG) without solves",
        config=SummarizeConfig,
        preset="short",
        run="devito_uq.apps.imaging.tools:run_summarize",
        default_out="outputs/imaging",
        report_keys=("metrics", "files"),
    ),
    Command(
        name="info",
        help="what a SEG-Y shot file holds: shots, traces, axes, header conventions",
        config=InfoConfig,
        preset="short",
        run="devito_uq.apps.imaging.tools:run_info",
        default_out=".",
        positional="segy",
        writes=False,
    ),
)
