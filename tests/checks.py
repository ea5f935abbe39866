"""Numerical checks shared by the test files: the field's dot and Taylor tests.

Import as ``from checks import dot_test, taylor_test`` (pytest puts ``tests/``
on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def dot_test(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> float:
    """Relative mismatch |<A x, y> - <x, Aᵀ y>| / |<A x, y>| of a linear pair."""
    ax = forward(x)
    aty = adjoint(y)
    lhs = torch.sum(ax * y).item()
    rhs = torch.sum(x * aty).item()
    return abs(lhs - rhs) / abs(lhs)


def taylor_test(
    f: Callable[[torch.Tensor], torch.Tensor],
    m0: torch.Tensor,
    dm: torch.Tensor,
    h0: float = 1.0,
    steps: int = 6,
    factor: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Taylor test of the autograd gradient of the scalar function ``f`` at ``m0``.

    For h = h0 · factor^k, k = 0 … steps-1:

    .. math::
        e_1(h) = |f(m_0 + h\\,\\delta m) - f(m_0)|, \\qquad
        e_2(h) = |f(m_0 + h\\,\\delta m) - f(m_0) - h \\langle \\nabla f(m_0), \\delta m\\rangle|

    and returns ``(h, e1, e2)``; the log-log slopes of e1 and e2 against h must be
    about 1 and 2 when the gradient is right.
    """
    m = m0.detach().clone().requires_grad_(True)
    f0 = f(m)
    (g,) = torch.autograd.grad(f0, m)
    f0 = f0.item()
    gdm = torch.sum(g * dm).item()
    hs, e1, e2 = [], [], []
    for k in range(steps):
        h = h0 * factor**k
        with torch.no_grad():
            fh = f(m0.detach() + h * dm).item()
        hs.append(h)
        e1.append(abs(fh - f0))
        e2.append(abs(fh - f0 - h * gdm))
    return np.array(hs), np.array(e1), np.array(e2)


def slopes(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Successive log-log slopes of an error sequence against the step sizes."""
    return np.diff(np.log(e)) / np.diff(np.log(h))
