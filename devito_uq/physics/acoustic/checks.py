"""Input checks of the acoustic modeling modules, before anything is compiled or solved.

The model, survey and tensor checks, the CFL limit of the acoustic scheme for the
largest velocity of a model, and the memory a solver for the geometry would need.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError, StabilityError
from devito_uq.physics.acoustic.model import AcousticModel
from devito_uq.physics.model import check_model
from devito_uq.physics.survey import Survey
from devito_uq.validation import check_allocation, check_device, check_dtype, check_shape

__all__ = [
    "check_geometry",
    "check_input",
    "check_solver_memory",
    "check_stability",
    "receiver_count",
]

# Relative slack on the CFL check: absorbs float32 round-off between a dt computed from
# a velocity and the limit recomputed from m = 1/v² (the bound itself is exact). At
# 1e-6 above the bound the Nyquist mode grows by at most 1.003 per step, so round-off
# noise stays negligible over thousands of steps.
_CFL_SLACK = 1e-6


def check_solver_memory(model: AcousticModel, survey: Survey, dtype: Any) -> None:
    """Refuse, before anything is built, a geometry whose solver cannot fit in memory."""
    check_allocation(
        f"an acoustic solver for the padded grid {list(model.padded_shape)} "
        f"(model shape {list(model.shape)}, nbl={model.nbl}) with {survey.nt} time steps",
        model.solver_nbytes(dtype) + 16 * survey.nt * (1 + max(survey.nreceivers)),
    )


def check_stability(model: AcousticModel, survey: Survey, m: Any) -> None:
    """Raise :class:`StabilityError` if ``survey.dt`` exceeds the CFL limit for ``m``.

    The limit uses the largest velocity in ``m`` (``1/sqrt(min m)``); cheap (one reduction).
    """
    if isinstance(m, torch.Tensor) and m.device.type == "cpu":
        m = m.detach().numpy()  # numpy reduction: see check_finite_positive
    mmin = float(m.min()) if isinstance(m, torch.Tensor) else float(np.min(m))
    vmax = 1.0 / np.sqrt(mmin)
    dtc = model.critical_dt(vmax)
    if survey.dt > dtc * (1 + _CFL_SLACK):
        raise StabilityError(
            f"survey dt={survey.dt:.6g} ms exceeds the stable limit {dtc:.6g} ms for the "
            f"largest velocity {vmax:.6g} km/s in the model; use dt <= {dtc:.6g} ms"
        )


def check_input(name: str, x: Any, model: AcousticModel) -> tuple[bool, type]:
    """Validate a model-space tensor; return (batched, numpy dtype)."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    check_device(f"{name}.device", x)
    npdtype = check_dtype(f"{name}.dtype", x.dtype)
    if x.dim() == model.dim:
        check_shape(name, x.shape, model.shape)
        return False, npdtype
    if x.dim() == model.dim + 1:
        check_shape(name, x.shape, (None, *model.shape))
        if x.shape[0] == 0:
            raise InvalidShapeError(f"{name} has an empty batch: shape {list(x.shape)}")
        return True, npdtype
    want = list(model.shape)
    raise InvalidShapeError(
        f"{name} has shape {list(x.shape)}; expected {want} or [batch, {', '.join(map(str, want))}]"
    )


def receiver_count(survey: Survey, shots: list[int]) -> int:
    """Receiver axis length of the data of ``shots``: the largest count (others padded)."""
    return max(survey.nreceivers[s] for s in shots)


def check_geometry(model: Any, survey: Any) -> None:
    """Types of ``model`` and ``survey``, and every source and receiver inside the model."""
    check_model(model, AcousticModel)  # the acoustic stability limit is applied to it
    if not isinstance(survey, Survey):
        raise InvalidArgumentError(f"survey must be a Survey; got {type(survey).__name__}")
    survey.check_inside(model)
