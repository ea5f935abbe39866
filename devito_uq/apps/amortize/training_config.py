"""The knobs every amortized problem shares: training set, conditional flow, training
and the study's per-survey budgets (``devito-uq amortize ...``).

A problem's config (``<problem>_config.py`` beside this file) inherits
:class:`AmortizeTraining`, sets the default of ``problem`` to its own name with
:func:`problem_knob` and adds its fields; :mod:`devito_uq.apps.amortize.config` finds it
there. Units: squared slowness in s²/km².
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from devito_uq.apps import knob
from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import (
    check_allocation,
    check_choice,
    check_count,
    check_in_range,
    check_int,
    check_nonnegative_int,
    check_positive_int,
    check_positive_scalar,
)

__all__ = ["AmortizeTraining", "problem_knob"]


def problem_knob(default: str) -> Any:
    """The ``problem`` field of a problem's config, defaulting to that problem's name."""
    return knob(default, "'avp' (Sleipner plane-wave profiles) or 'imaging' (2D Born)")


@dataclass
class AmortizeTraining:
    """Training set, conditional flow, maximum-likelihood training and the study's
    per-survey budgets, common to every amortized problem."""

    problem: str = problem_knob("")  # each problem's config sets its name
    dataset: str = knob("", "folder of the training set ('': OUT/dataset)")
    checkpoint: str = knob("", "trained amortized posterior file ('': OUT/amortized.pt)")
    n_train: int = knob(50000, "training pairs (model, data) simulated from the prior")
    n_validation: int = knob(2000, "validation pairs (whole shards after the training ones)")
    shard_size: int = knob(1000, "pairs per on-disk shard (the unit of resume and of MPI work)")
    flow_steps: int = knob(6, "conditional flow steps (per level for imaging)")
    flow_hidden: int = knob(128, "conditioner width (channels for imaging)")
    summary_features: int = knob(
        128, "summary network output: features (AVP data) or channels (imaging Jᵀd)"
    )
    summary_hidden: int = knob(256, "summary network width")
    iterations: int = knob(5000, "maximum-likelihood training iterations")
    batch_size: int = knob(128, "training pairs per iteration")
    lr: float = knob(2e-3, "Adam learning rate (cosine decay to lr·lr_final)")
    lr_final: float = knob(0.01, "final learning rate as a fraction of lr")
    validate_every: int = knob(250, "iterations between validation losses")
    checkpoint_every: int = knob(500, "iterations between training checkpoints")
    device: str = knob("cpu", "where the flow trains and samples: 'cpu', 'cuda' or 'auto'")
    n_samples: int = knob(1000, "posterior samples per survey in the study")
    correct_iterations: int = knob(
        200, "latent-correction iterations per survey (reverse KL with the physics)"
    )
    correct_batch_size: int = knob(8, "flow samples per correction iteration")
    correct_lr: float = knob(1e-2, "Adam learning rate of the correction")
    vi_iterations: int = knob(2000, "iterations of the per-survey VI fit compared with")
    n_truths: int = knob(200, "simulated truths of the calibration (SBC, coverage)")
    noise_factor: float = knob(2.0, "noise of the shifted survey relative to training")
    shift_fraction: float = knob(
        0.5, "fraction of ray parameters (AVP) or shots (imaging) kept by the shifted survey"
    )
    seed: int = knob(0, "seed of the training set, the flow and the study")
    label: str = knob("default", "schedule name written to summary.json", cli=False)

    def check_training(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad common field."""
        own = type(self).__dataclass_fields__["problem"].default
        check_choice("problem", self.problem, (own,))
        check_choice("device", self.device, ("cpu", "cuda", "auto"))
        for name in ("dataset", "checkpoint"):
            if not isinstance(getattr(self, name), str):
                raise InvalidArgumentError(f"{name}={getattr(self, name)!r} must be a path or ''")
        for name in (
            "n_train",
            "n_validation",
            "shard_size",
            "flow_steps",
            "flow_hidden",
            "summary_features",
            "summary_hidden",
            "iterations",
            "batch_size",
            "validate_every",
            "checkpoint_every",
            "n_samples",
            "correct_batch_size",
            "vi_iterations",
        ):
            check_positive_int(name, getattr(self, name))
        for name in (
            "n_train",
            "n_validation",
            "shard_size",
            "flow_hidden",
            "summary_features",
            "summary_hidden",
            "batch_size",
            "n_samples",
            "n_truths",
            "correct_batch_size",
        ):
            check_count(name, getattr(self, name))
        # A lower bound of the flow's weights (hidden x hidden per step, float32, with the
        # gradient and Adam's two moments): a billion channels is refused here, not in torch.
        check_allocation(
            f"the flow's conditioners (flow_hidden={self.flow_hidden}, "
            f"flow_steps={self.flow_steps}, with Adam)",
            4 * 4 * self.flow_hidden**2 * self.flow_steps,
        )
        check_nonnegative_int("correct_iterations", self.correct_iterations)
        check_int("n_truths", self.n_truths, minimum=2)
        for name in ("lr", "correct_lr", "noise_factor"):
            check_positive_scalar(name, getattr(self, name))
        check_in_range("lr_final", self.lr_final, 0.0, 1.0, low_open=True)
        check_in_range("shift_fraction", self.shift_fraction, 0.0, 1.0, low_open=True)
        check_int("seed", self.seed, minimum=0)
        if self.n_train % self.shard_size or self.n_validation % self.shard_size:
            raise InvalidArgumentError(
                f"n_train={self.n_train} and n_validation={self.n_validation} must be multiples "
                f"of shard_size={self.shard_size} (validation takes whole shards)"
            )
        if self.batch_size > self.n_train:
            raise InvalidArgumentError(
                f"batch_size={self.batch_size} exceeds the n_train={self.n_train} training pairs"
            )

    @classmethod
    def short(cls, **overrides: Any) -> AmortizeTraining:
        """The problem's default workflow, with ``overrides``."""
        return cls(**overrides)

    def for_problem(self) -> AmortizeTraining:
        """The config of this problem: ``self``."""
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (stored in ``amortized.pt`` and ``summary.json``)."""
        return dataclasses.asdict(self)
