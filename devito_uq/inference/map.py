r"""Maximum a posteriori estimate: :math:`\arg\min_m \Phi(m) + R(m)`.

With a parameterization the search runs on the latent ``x`` of ``m = g(x)``
without the Jacobian term, so the result is the mode of the posterior density of
``m`` (restricted to the bounds), not of ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from devito_uq.errors import InvalidArgumentError, TrainingDivergedError
from devito_uq.inference.parameterization import Parameterization
from devito_uq.inference.target import PosteriorTarget, as_target
from devito_uq.validation import (
    check_bool,
    check_choice,
    check_finite,
    check_nonnegative_scalar,
    check_positive_int,
    check_positive_scalar,
)

__all__ = ["map_estimate", "MAPResult"]

_METHODS = ("lbfgs", "adam")


@dataclass
class MAPResult:
    """Outcome of :func:`map_estimate`.

    Attributes
    ----------
    model : torch.Tensor
        ``[*model_shape]`` the MAP model ``m`` (model units).
    objective : float
        Final value of ``misfit + prior`` (nats).
    history : list of float
        Objective per iteration (L-BFGS: per evaluation).
    gradient_evaluations : int
        Objective gradients spent.
    iterations : int
        Iterations run (L-BFGS: its own count; Adam: steps).
    converged : bool or None
        With ``stall_nats``: whether the objective stalled (or the gradient met
        ``tolerance``) before the cap of ``iterations``; ``None`` without a criterion.
    """

    model: torch.Tensor
    objective: float
    history: list[float]
    gradient_evaluations: int
    iterations: int = 0
    converged: bool | None = None


def map_estimate(
    likelihood: PosteriorTarget | Callable[..., torch.Tensor] | None,
    prior: Any | None = None,
    x0: torch.Tensor | None = None,
    method: str = "lbfgs",
    iterations: int = 100,
    lr: float = 1.0,
    parameterization: Parameterization | None = None,
    tolerance: float = 1e-9,
    progress: bool = False,
    stall_nats: float | None = None,
    stall_window: int = 10,
) -> MAPResult:
    """Minimize ``misfit(m) + prior(m)`` from the starting model ``x0`` ``[*model_shape]``.

    Parameters
    ----------
    likelihood, prior, parameterization
        The posterior's pieces, or a :class:`PosteriorTarget` in the first position
        (``map_estimate(t, x0=m0)``).
    x0 : torch.Tensor
        ``[*model_shape]`` starting model ``m`` (not latent), inside the bounds.
    method : str
        ``"lbfgs"`` (strong-Wolfe line search; ``lr`` is its initial step, 1 is right
        for it) or ``"adam"`` (``lr`` is Adam's rate).
    iterations : int
        Iterations (L-BFGS: at most this many, with up to two objective evaluations
        each; ``history`` then holds one value per evaluation).
    lr : float
        Initial step (L-BFGS) or learning rate (Adam), latent units.
    tolerance : float
        L-BFGS stops when the gradient's max-norm falls below it.
    progress : bool
        Show a tqdm bar.
    stall_nats : float, optional
        Stop once ``stall_window`` iterations lowered the objective by less than this
        many nats in all (``None``: run all ``iterations``). The objective is a negative
        log density, so a stall of about a nat means what is left to gain is below the
        posterior's own resolution; ``iterations`` is then a cap, and
        :attr:`MAPResult.converged` says whether the stall (or ``tolerance``) was met
        before it.
    stall_window : int
        Iterations the stall is measured over.

    Returns
    -------
    MAPResult

    Raises
    ------
    InvalidArgumentError
        If an argument is out of range or ``x0`` is not a finite floating tensor.
    TrainingDivergedError
        If the objective becomes non-finite.
    """
    target = as_target(likelihood, prior, parameterization)
    check_choice("method", method, _METHODS)
    iterations = check_positive_int("iterations", iterations)
    lr = check_positive_scalar("lr", lr)
    tolerance = check_nonnegative_scalar("tolerance", tolerance)
    progress = check_bool("progress", progress)
    if stall_nats is not None:
        stall_nats = check_positive_scalar("stall_nats", stall_nats)
    stall_window = check_positive_int("stall_window", stall_window)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise InvalidArgumentError(f"x0 must be a floating-point tensor, got {type(x0).__name__}")
    check_finite("x0", x0)
    x = target.to_latent(x0.detach().unsqueeze(0).clone()).requires_grad_(True)
    history: list[float] = []
    evaluations = 0

    def objective() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        # No Jacobian term: the mode of the density of m, not of the latent x.
        value = target.value(x, jacobian=False).sum()
        if not torch.isfinite(value):
            raise TrainingDivergedError(
                f"MAP objective became {value.item()} after {len(history)} iterations"
            )
        return value

    # Objective after each window of iterations: the stall test compares the last two.
    marks: list[float] = []
    done = 0
    stalled = False
    bar = tqdm(total=iterations, disable=not progress, desc="MAP")
    if method == "lbfgs":
        # L-BFGS keeps its curvature pairs and line-search state across step() calls
        # (restarting it each iteration stalls), so the run is cut into windows of
        # ``stall_window`` iterations without losing them.
        window = stall_window if stall_nats is not None else iterations
        opt = torch.optim.LBFGS(
            [x],
            lr=lr,
            max_iter=window,
            max_eval=2 * window,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=tolerance,
            tolerance_change=0.0,
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            value = objective()
            value.backward()
            history.append(float(value.detach()))
            return value

        while done < iterations and not stalled:
            opt.param_groups[0]["max_iter"] = min(window, iterations - done)
            opt.param_groups[0]["max_eval"] = 2 * opt.param_groups[0]["max_iter"]
            before = opt.state[x].get("n_iter", 0)
            opt.step(closure)
            ran = opt.state[x].get("n_iter", 0) - before
            done += ran
            bar.update(ran)
            grad = x.grad
            if grad is not None and float(grad.abs().max()) <= tolerance:
                stalled = True  # the gradient criterion: converged
            marks.append(history[-1])
            if stall_nats is not None:  # the first window is measured from the start
                previous = marks[-2] if len(marks) > 1 else history[0]
                stalled = stalled or previous - marks[-1] < stall_nats
            if stall_nats is None or ran == 0:
                # One call without a stall criterion (as before it existed); no step made
                # (a flat line search): nothing more to gain.
                break
    else:
        opt = torch.optim.Adam([x], lr=lr)
        while done < iterations and not stalled:
            opt.zero_grad()
            value = objective()
            value.backward()
            opt.step()
            history.append(float(value.detach()))
            done += 1
            bar.update()
            if stall_nats is not None and done % stall_window == 0:
                marks.append(history[-1])
                stalled = len(marks) > 1 and marks[-2] - marks[-1] < stall_nats
    bar.close()
    with torch.no_grad():
        final = float(target.value(x, jacobian=False).sum())
        model = target.to_model(x)[0][0].detach()
    return MAPResult(
        model=model,
        objective=final,
        history=history,
        gradient_evaluations=evaluations,
        iterations=done,
        converged=stalled if stall_nats is not None else None,
    )
