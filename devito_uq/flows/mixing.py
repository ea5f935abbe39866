r"""The dense LU mixing of vectors as two autograd Functions with hand-written backward.

:class:`~devito_uq.flows.layers.InvertibleConv1x1` with ``ndim=0`` maps ``[batch, n]``
vectors by :math:`W = P L U` with :math:`L = I + \mathrm{tril}(A, -1)`,
:math:`U = \mathrm{triu}(A, 1) + \mathrm{diag}(d)`, :math:`d = \sigma e^{s}`, where
:math:`A` is the packed parameter ``lu`` (its diagonal unused), :math:`s` is ``log_s`` and
:math:`\sigma` the fixed signs. In row form (a sample is a row):

- forward, :math:`y = x W^\top`: :math:`z = x U^\top`, :math:`z_2 = z L^\top`,
  :math:`y = z_2 P^\top` (a gather);
- inverse, :math:`x = y W^{-\top}`: the gather :math:`z = y P`, then two triangular solves
  :math:`L z_1 = z^\top`, :math:`U x^\top = z_1` on the column-major transposes.

Autograd through ``tril``/``triu``/``diagonal_scatter``/``solve_triangular`` (the
:func:`autograd_forward`/:func:`autograd_inverse` formulation) builds about a dozen nodes
per layer and, in the solves' backward, extra n×n projections, negations and copies: at
n = 1024 half of a VI step. The backward passes of the Functions here write the gradient
of the packed ``lu`` once, block by block, each entry from the factor it belongs to —
strict lower part from the :math:`L` factor, strict upper part from the :math:`U` factor,
zero on the unused diagonal, as autograd gives — and the gradient of ``log_s`` from the
diagonal terms (:math:`\bar\ell` is the cotangent of the log-determinant, which each
Function also returns):

.. math::
    \text{forward: } \bar A = \mathrm{tril}(\bar z_2^\top z, -1)
        + \mathrm{triu}(\bar z^\top x, 1),\quad
    \bar s = d \odot \textstyle\sum_b \bar z \odot x + \textstyle\sum_b \bar\ell_b

    \text{inverse: } \bar A = -\mathrm{tril}(\bar z\,z_1^\top, -1)
        - \mathrm{triu}(\bar z_1 x^\top, 1),\quad
    \bar s = -d \odot \textstyle\sum_b \bar z_1 \odot x - \textstyle\sum_b \bar\ell_b,
    \quad U^\top \bar z_1 = \bar x^\top,\ L^\top \bar z = \bar z_1

Double backward (``create_graph=True``) differentiates the autograd formulation instead,
so Hessian-vector products work as through plain autograd. :func:`lu_mix`, what the layer
calls, uses the Functions only for long vectors (:data:`FUNCTION_MIN_SIZE`): on short ones
a step is launch-bound and the Functions' Python overhead costs more than the autograd
nodes they save.
"""

from __future__ import annotations

import torch

__all__ = [
    "FUNCTION_MIN_SIZE",
    "lu_mix",
    "lu_mix_forward",
    "lu_mix_inverse",
    "autograd_forward",
    "autograd_inverse",
]

#: Vector length from which :func:`lu_mix` runs the Functions; shorter vectors run the
#: autograd formulation. Measured (benchmarks/bench_flows.py, one VI step, 4 steps, batch
#: 8, 1 thread): the Function's Python overhead (about 60 µs a layer, forward and
#: backward) exceeds the autograd work it saves up to n ≈ 256 (n = 128: 4.5 vs 4.1 ms a
#: step; n = 256: level); at n = 1024 the Function halves the layer's backward.
FUNCTION_MIN_SIZE = 257

_MASKS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _strict_lower(n: int, device: torch.device) -> torch.Tensor:
    """Cached boolean mask of the strict lower triangle, ``[n, n]``; it depends only on the
    size and device, never on the parameters, so nothing has to invalidate it."""
    key = (n, device)
    mask = _MASKS.get(key)
    if mask is None:
        if len(_MASKS) > 32:  # many sizes in one process: keep the cache small
            _MASKS.clear()
        mask = torch.ones(n, n, dtype=torch.bool, device=device).tril_(-1)
        _MASKS[key] = mask
    return mask


#: Diagonal blocks up to this size are formed whole and masked; larger ones split.
_LEAF = 128


def _fill_packed(p, q, r, s, out) -> None:
    """``out = tril(p qᵀ, -1) + triu(r sᵀ, 1)`` on and below/above the diagonal (the
    diagonal itself is left to the caller) for ``p, q, r, s`` ``[n, k]``, by blocks: the
    off-diagonal quadrants are single products written in place, the diagonal quadrants
    recurse. Each entry is computed about once (two full n×n products and a masked select
    computed it twice and streamed three n×n arrays: 4× slower at n = 1024)."""
    n = p.shape[0]
    if n <= _LEAF:
        torch.where(_strict_lower(n, p.device), p @ q.mT, r @ s.mT, out=out)
        return
    m = n // 2
    torch.mm(p[m:], q[:m].mT, out=out[m:, :m])
    torch.mm(r[:m], s[m:].mT, out=out[:m, m:])
    _fill_packed(p[:m], q[:m], r[:m], s[:m], out[:m, :m])
    _fill_packed(p[m:], q[m:], r[m:], s[m:], out[m:, m:])


def _batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is a vmap batch (torch.func, or the legacy vmap of
    ``torch.autograd.functional.jacobian(..., vectorize=True)``)."""
    return torch._C._functorch.is_batchedtensor(t) or "Batched" in str(torch._C._dispatch_keys(t))


def _packed_grad(p, q, r, s) -> torch.Tensor:
    """``tril(p qᵀ, -1) + triu(r sᵀ, 1)`` ``[n, n]``, zero diagonal: the gradient of ``lu``
    from the cotangents of its L factor (``p qᵀ``) and U factor (``r sᵀ``)."""
    if _batched(p):
        # under vmap (e.g. a vectorized Jacobian) out= writes have no batching rule
        return torch.tril(p @ q.mT, -1) + torch.triu(r @ s.mT, 1)
    n = p.shape[0]
    out = p.new_empty(n, n)
    _fill_packed(p, q, r, s, out)
    out.diagonal().zero_()
    return out


def _logdet(log_s: torch.Tensor, batch: int, negate: bool) -> torch.Tensor:
    ld = log_s.sum()
    return (-ld if negate else ld).expand(batch).clone()


def autograd_forward(x, lu, log_s, sign, perm_index, perm_inverse):
    """:func:`lu_mix_forward` through plain autograd (the formulation the Function replaces)."""
    z = torch.addmm(x * (sign * torch.exp(log_s)), x, torch.triu(lu, 1).mT)
    z = torch.addmm(z, z, torch.tril(lu, -1).mT)
    return z.index_select(1, perm_index), log_s.sum().expand(x.shape[0])


def autograd_inverse(y, lu, log_s, sign, perm_index, perm_inverse):
    """:func:`lu_mix_inverse` through plain autograd (the formulation the Function replaces)."""
    z = y.index_select(1, perm_inverse).mT
    z = torch.linalg.solve_triangular(lu, z, upper=False, unitriangular=True)
    u = torch.diagonal_scatter(lu, sign * torch.exp(log_s))
    x = torch.linalg.solve_triangular(u, z, upper=True).mT
    return x, -log_s.sum().expand(y.shape[0])


def _double_backward(ctx, reference, inp, lu, log_s, sign, perm_index, perm_inverse, gout, gld):
    """Gradients with a graph (``create_graph=True``): differentiate the reference."""
    out, ld = reference(inp, lu, log_s, sign, perm_index, perm_inverse)
    wanted = [t for t, need in zip((inp, lu, log_s), ctx.needs_input_grad) if need]
    grads = iter(torch.autograd.grad((out, ld), wanted, (gout, gld), create_graph=True))
    return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None, None)


class _LUForward(torch.autograd.Function):
    """``y = x Wᵀ`` and ``log|det W|`` ``[batch]`` (module docstring)."""

    @staticmethod
    def forward(ctx, x, lu, log_s, sign, perm_index, perm_inverse):
        d = sign * torch.exp(log_s)
        # the products read one triangle each: mask copies, kept for the backward pass
        upper = torch.triu(lu, 1)
        lower = torch.tril(lu, -1)
        z = torch.addmm(x * d, x, upper.mT)
        z2 = torch.addmm(z, z, lower.mT)
        ctx.save_for_backward(x, lu, log_s, sign, perm_index, perm_inverse, z, upper, lower, d)
        return z2.index_select(1, perm_index), _logdet(log_s, x.shape[0], False)

    @staticmethod
    def backward(ctx, gy, gld):
        x, lu, log_s, sign, perm_index, perm_inverse, z, upper, lower, d = ctx.saved_tensors
        if torch.is_grad_enabled():
            args = (x, lu, log_s, sign, perm_index, perm_inverse, gy, gld)
            return _double_backward(ctx, autograd_forward, *args)
        need_x, need_lu, need_s = ctx.needs_input_grad[:3]
        g2 = gy.index_select(1, perm_inverse)  # cotangent of z2 = z Lᵀ
        gz = torch.addmm(g2, g2, lower)
        gx = torch.addmm(gz * d, gz, upper) if need_x else None
        g_lu = _packed_grad(g2.mT, z.mT, gz.mT, x.mT) if need_lu else None
        g_log_s = (gz * x).sum(0) * d + gld.sum() if need_s else None
        return gx, g_lu, g_log_s, None, None, None


class _LUInverse(torch.autograd.Function):
    """``x = y W⁻ᵀ`` and ``log|det W⁻¹|`` ``[batch]`` (module docstring)."""

    @staticmethod
    def forward(ctx, y, lu, log_s, sign, perm_index, perm_inverse):
        d = sign * torch.exp(log_s)
        # solves on the column-major transposes (3× faster than solving from the right at
        # n = 1024); the L solve reads only the strict lower part of lu
        z = y.index_select(1, perm_inverse).mT
        z1 = torch.linalg.solve_triangular(lu, z, upper=False, unitriangular=True)
        u = torch.diagonal_scatter(lu, d)
        xt = torch.linalg.solve_triangular(u, z1, upper=True)
        ctx.save_for_backward(y, lu, log_s, sign, perm_index, perm_inverse, u, d, z1, xt)
        return xt.mT, _logdet(log_s, y.shape[0], True)

    @staticmethod
    def backward(ctx, gx, gld):
        y, lu, log_s, sign, perm_index, perm_inverse, u, d, z1, xt = ctx.saved_tensors
        if torch.is_grad_enabled():
            args = (y, lu, log_s, sign, perm_index, perm_inverse, gx, gld)
            return _double_backward(ctx, autograd_inverse, *args)
        need_y, need_lu, need_s = ctx.needs_input_grad[:3]
        # Uᵀ ḡz1 = ḡxᵀ and Lᵀ ḡz = ḡz1 on transposed views: no copies of the factors
        gz1 = torch.linalg.solve_triangular(u.mT, gx.mT, upper=False)
        gy = g_lu = None
        if need_y or need_lu:
            gz = torch.linalg.solve_triangular(lu.mT, gz1, upper=True, unitriangular=True)
            gy = gz.mT.index_select(1, perm_index) if need_y else None
            g_lu = _packed_grad(gz, -z1, gz1, -xt) if need_lu else None
        g_log_s = -(gz1 * xt).sum(1) * d - gld.sum() if need_s else None
        return gy, g_lu, g_log_s, None, None, None


def lu_mix(v, lu, log_s, sign, perm_index, perm_inverse, inverse: bool):
    """``y = v Wᵀ`` (``inverse=False``) or ``x = v W⁻ᵀ`` and the log-determinant, through
    the Functions for vectors of at least :data:`FUNCTION_MIN_SIZE` entries and through
    plain autograd below (same values; see :func:`lu_mix_forward` for the arguments)."""
    if lu.shape[0] >= FUNCTION_MIN_SIZE:
        fn = _LUInverse.apply if inverse else _LUForward.apply
    else:
        fn = autograd_inverse if inverse else autograd_forward
    return fn(v, lu, log_s, sign, perm_index, perm_inverse)


def lu_mix_forward(x, lu, log_s, sign, perm_index, perm_inverse):
    """``y = x Wᵀ`` ``[batch, n]`` and ``log|det W|`` ``[batch]`` for ``x`` ``[batch, n]``.

    ``lu`` ``[n, n]`` packs the strict triangles of L and U, ``log_s``/``sign`` ``[n]`` give
    U's diagonal ``sign·exp(log_s)``, ``perm_index``/``perm_inverse`` ``[n]`` (long) apply
    P as gathers: ``(z Pᵀ)_j = z_perm_index[j]``, ``(y P)_k = y_perm_inverse[k]``."""
    return _LUForward.apply(x, lu, log_s, sign, perm_index, perm_inverse)


def lu_mix_inverse(y, lu, log_s, sign, perm_index, perm_inverse):
    """``x = y W⁻ᵀ`` ``[batch, n]`` and ``log|det W⁻¹|`` ``[batch]`` (arguments as in
    :func:`lu_mix_forward`)."""
    return _LUInverse.apply(y, lu, log_s, sign, perm_index, perm_inverse)
