"""Amortized posteriors: ``devito-uq amortize simulate|train|study|all CONFIG``.

A conditional normalizing flow trained once on simulated (model, data) pairs returns the
posterior of a new survey in one forward pass; a physics-based correction of its latent
(Siahkoohi et al. 2023) repairs it when the survey departs from the training distribution.

    devito-uq amortize all --out outputs/amortize            # AVP workflow (make amortize)
    devito-uq amortize simulate examples/amortize_marmousi.toml --out run2d
    mpiexec -n 4 devito-uq amortize simulate ...               # shards over the ranks
    devito-uq amortize train examples/amortize_marmousi.toml --out run2d
    devito-uq invert --out survey --amortized run2d/amortized.pt --correct

Parts: ``run.py`` (simulate → train → study), ``training_config.py`` (the knobs every
problem shares), ``config.py`` (:class:`AmortizeConfig`, the command's: every problem's
fields, built from theirs) and per problem a config and a module: ``avp_config.py`` and
``avp.py`` (Sleipner profiles, data as the condition), ``imaging_config.py`` and
``imaging.py`` (2D Born imaging, the migrated image Jᵀd as the condition). A new problem
adds its ``<problem>_config.py`` and ``<problem>.py``.
"""

from __future__ import annotations

from devito_uq.apps import Command
from devito_uq.apps.amortize.avp_config import AVPAmortizeConfig
from devito_uq.apps.amortize.config import AmortizeConfig, problem_config
from devito_uq.apps.amortize.imaging_config import ImagingAmortizeConfig

__all__ = [
    "AmortizeConfig",
    "AVPAmortizeConfig",
    "ImagingAmortizeConfig",
    "problem_config",
    "COMMANDS",
]

_REPORT = ("dataset", "pairs", "checkpoint", "best_validation_nll", "metrics", "time_s")
_RUN = "devito_uq.apps.amortize.run"

#: The ``devito-uq amortize ...`` sub-commands.
COMMANDS = tuple(
    Command(
        name=f"amortize {step}",
        help=help_text,
        config=AmortizeConfig,
        preset="short",
        run=f"{_RUN}:run_{step}",
        default_out="outputs/amortize",
        report_keys=_REPORT,
        mpi=True,
    )
    for step, help_text in (
        ("simulate", "draw models from the prior and simulate noisy data: the training set"),
        ("train", "train the conditional flow on the training set (maximum likelihood)"),
        ("study", "amortized vs corrected vs per-survey posteriors on the problem's surveys"),
        ("all", "simulate, train and study in one folder (make amortize)"),
    )
)
