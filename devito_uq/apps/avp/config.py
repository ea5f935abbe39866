"""Every knob of the Sleipner AVP experiment, validated in one place.

Each field carries its help text in ``metadata["help"]``: the ``devito-uq avp`` and
``devito-uq demo`` options are generated from these fields (:mod:`devito_uq.cli`),
so a new knob is one line here. Fields with ``metadata["cli"] = False`` are not
offered on the command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from devito_uq.apps import knob as _knob
from devito_uq.apps.pieces import FlowRefinement, ProfilePosterior, SleipnerNoise
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
    check_tuple,
)

__all__ = ["AVPConfig"]


@dataclass
class AVPConfig(SleipnerNoise, ProfilePosterior, FlowRefinement):
    """Every knob of the experiment; :meth:`~AVPConfig.full` is the original schedule.

    The noise rule, prior, parameterization and flow come from the shared groups
    :class:`~devito_uq.apps.pieces.SleipnerNoise` and
    :class:`~devito_uq.apps.pieces.ProfilePosterior` (also those of ``devito-uq
    calibrate``). Units: angles in degrees, times in ms, frequencies in Hz, squared
    slowness in s²/km². ``iterations`` are VI steps of ``batch_size`` flow samples each.
    """

    angle_min: float = _knob(12.8, "smallest incidence angle, degrees")
    angle_max: float = _knob(32.0, "largest incidence angle, degrees")
    n_angles: int = _knob(7, "number of incidence angles (ray parameters)")
    t1: float = _knob(400.0, "record length, ms")
    dt: float = _knob(0.5, "time step, ms")
    corners: tuple[float, float, float, float] = _knob(
        (5.0, 30.0, 50.0, 80.0), "band-pass corner frequencies f1 f2 f3 f4, Hz"
    )
    iterations: int = _knob(32768, "VI iterations")
    batch_size: int = _knob(8, "flow samples per VI iteration")
    lr: float = _knob(1e-3, "Adam learning rate")
    lr_decay: float = _knob(0.9, "learning-rate factor every lr_decay_every iterations")
    lr_decay_every: int = _knob(1024, "iterations per lr_decay factor")
    temper_fraction: float = _knob(
        0.0, "fraction of the VI iterations over which the target's weight rises from 0.1 to 1"
    )
    checkpoint_every: int = _knob(
        0, "VI checkpoint interval in iterations (0: 2% of the run, at least 100)"
    )
    map_iterations: int = _knob(100, "L-BFGS iterations of the MAP estimate")
    mala_chains: int = _knob(8, "parallel MALA chains")
    mala_steps: int = _knob(20000, "MALA steps per chain after burn-in")
    mala_burn_in: int = _knob(2000, "MALA burn-in steps")
    mala_thin: int = _knob(10, "keep every n-th MALA draw")
    mala_step_size: float = _knob(0.05, "initial MALA step (latent units²)")
    concurrent: str = _knob(
        "auto",
        "MAP + MALA in a second process beside VI: auto (when this process may run on two "
        "or more cores and MALA has at least 1,000 steps), yes, no; the results are the same",
    )
    n_samples: int = _knob(1024, "VI posterior samples drawn for the summary")
    seed: int = _knob(1, "noise, flow and chain seed")
    label: str = _knob("full", "schedule name written to summary.json", cli=False)
    extra: dict = field(default_factory=dict, metadata={"help": "free-form notes", "cli": False})

    @classmethod
    def full(cls, **overrides: Any) -> AVPConfig:
        """The original schedule: 32,768 VI iterations, a 20,000-step MALA reference."""
        return cls(**overrides)

    @classmethod
    def short(cls, **overrides: Any) -> AVPConfig:
        """``make demo``'s schedule (< 5 min on 2 cores): 2,000 VI iterations at a
        faster-decaying 2·10⁻³ rate, the target tempered over the first 3/4, refined by
        8 chains × 3,000 MALA steps in the flow's latent (calibrated in
        docs/results/calibration.md), and 2,500 MALA steps of 8 chains."""
        base = dict(
            iterations=2000,
            lr=2e-3,
            lr_decay=0.5,
            lr_decay_every=1000,
            temper_fraction=0.75,
            map_iterations=60,
            mala_steps=2000,
            mala_burn_in=500,
            mala_thin=5,
            label="short",
        )
        base.update(overrides)
        return cls(**base)

    def validate(self) -> AVPConfig:
        """Raise :class:`InvalidArgumentError` naming the first bad value; return ``self``."""
        for name in ("angle_min", "angle_max"):
            check_in_range(name, getattr(self, name), 0.0, 90.0, low_open=True, high_open=True)
        if self.angle_min > self.angle_max:
            raise InvalidArgumentError(
                f"angle_min={self.angle_min} must not exceed angle_max={self.angle_max}"
            )
        self.check_sleipner_noise()
        self.check_profile_posterior()
        for name in (
            "n_angles",
            "iterations",
            "batch_size",
            "lr_decay_every",
            "map_iterations",
            "mala_chains",
            "mala_steps",
            "mala_thin",
        ):
            check_positive_int(name, getattr(self, name))
        check_nonnegative_int("mala_burn_in", self.mala_burn_in)
        check_in_range("temper_fraction", self.temper_fraction, 0.0, 1.0)
        check_nonnegative_int("checkpoint_every", self.checkpoint_every)
        check_int("n_samples", self.n_samples, minimum=2)  # a std needs two samples
        for name in ("n_angles", "batch_size", "mala_chains", "n_samples"):
            check_count(name, getattr(self, name))
        check_int("seed", self.seed)
        if self.mala_steps < self.mala_thin:
            raise InvalidArgumentError(
                f"mala_thin={self.mala_thin} must not exceed mala_steps={self.mala_steps}"
            )
        for name in ("t1", "dt", "lr", "mala_step_size"):
            check_positive_scalar(name, getattr(self, name))
        check_in_range("lr_decay", self.lr_decay, 0.0, 1.0, low_open=True)
        corners = check_tuple("corners", self.corners, 4, positive=True)
        check_choice("concurrent", self.concurrent, ("auto", "yes", "no"))
        # Combinations, all before any solve: a run must not fail after MAP, MALA or VI.
        if self.dt >= self.t1:
            raise InvalidArgumentError(f"dt={self.dt} ms must be smaller than t1={self.t1} ms")
        nyquist = 500.0 / self.dt  # Hz, dt in ms
        if any(b <= a for a, b in zip(corners, corners[1:])) or corners[3] >= nyquist:
            raise InvalidArgumentError(
                f"corners={self.corners} must increase strictly and stay below the Nyquist "
                f"frequency {nyquist:g} Hz of dt={self.dt} ms"
            )
        kept = self.mala_chains * (self.mala_steps // self.mala_thin)
        if kept < 2:  # the MALA reference's standard deviation needs two draws
            raise InvalidArgumentError(
                f"mala_chains={self.mala_chains} x (mala_steps={self.mala_steps} // "
                f"mala_thin={self.mala_thin}) keeps {kept} MALA draw(s); at least 2 are needed"
            )
        gamma = self.lr_decay ** (1.0 / self.lr_decay_every)
        final_lr = self.lr * gamma**self.iterations
        if not final_lr > 0.0:
            raise InvalidArgumentError(
                f"the final learning rate lr*lr_decay**(iterations/lr_decay_every) = "
                f"{self.lr}*{self.lr_decay}**({self.iterations}/{self.lr_decay_every}) "
                f"underflows to {final_lr}; raise lr_decay or lr_decay_every"
            )
        if not isinstance(self.label, str):
            raise InvalidArgumentError(f"label={self.label!r} must be a string")
        if not isinstance(self.extra, dict):
            raise InvalidArgumentError(f"extra={self.extra!r} must be a dict")
        try:  # stored in summary.json and in the caches: plain data only
            json.dumps(self.extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"extra={self.extra!r} is not plain JSON data: {exc}"
            ) from None
        # Memory of the sample sets, refused before the solves that would precede them.
        nz, itemsize = 128, 4 if self.dtype == "float32" else 8  # the Sleipner profile
        check_allocation(f"n_samples={self.n_samples}", 2 * self.n_samples * nz * itemsize)
        check_allocation(f"{kept} kept MALA draws", 2 * kept * nz * itemsize)
        self.check_flow_refinement(nz, itemsize)
        # The data of one forward per VI sample and MALA chain (with its adjoint and
        # residual): n_angles traces of t1/dt samples each.
        nt = int(self.t1 / self.dt) + 1
        check_allocation(
            f"the AVP gathers of batch_size={self.batch_size} + mala_chains="
            f"{self.mala_chains} models x n_angles={self.n_angles} x {nt} samples "
            f"(t1={self.t1:g} ms / dt={self.dt:g} ms)",
            3 * (self.batch_size + self.mala_chains) * self.n_angles * nt * itemsize,
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (written to ``summary.json`` and stored in the caches)."""
        return dataclasses.asdict(self)
