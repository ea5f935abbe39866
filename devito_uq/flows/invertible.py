r"""Invertible-module base classes, memory-frugal backpropagation and the checks they share.

Every invertible layer maps ``y, logdet = layer(x, c)`` and ``x, logdet = layer.inverse(y, c)``
with ``logdet`` of shape ``[batch]``: ``log|det ∂y/∂x|`` forward and ``log|det ∂x/∂y|``
inverse (so the two are negatives of each other at matching points). ``c`` is an optional
condition tensor that only conditional layers read.

:class:`InvertibleSequential` chains layers. A memory-frugal training pass runs through one
:class:`torch.autograd.Function` that keeps only the final output; the backward pass walks
the layers in reverse, rebuilds each layer's input from its output by inversion and
recomputes that single layer under autograd to obtain the gradients for its input, its
parameters and the condition. Activation memory therefore does not grow with depth (Gomez
et al. 2017, "The reversible residual network"; Putzky & Welling 2019, "Invert to learn to
invert"), at the price of one extra inverse and one extra forward per layer.

.. math::
    \bar x_k = \Big(\frac{\partial y_k}{\partial x_k}\Big)^{\!\top} \bar y_k
             + \Big(\frac{\partial \log|\det J_k|}{\partial x_k}\Big)^{\!\top} \overline{\ell},
    \qquad x_k = f_k^{-1}(y_k)

where :math:`\overline{\ell}` is the cotangent of the summed log-determinant (the same for
every layer). The same machinery runs in the inverse direction (the generative pass used in
variational inference).

When to be frugal (``memory_frugal="auto"``, the default): the recomputation costs
1.4× (CPU) to 1.9× (GPU) the time of plain autograd, so it only pays when the activations
plain autograd would keep are large. The first training pass for a new input shape, dtype,
device and direction measures the bytes autograd saves for a batch of 1 and of 2 (a
saved-tensors hook, parameters excluded), so the plain pass would keep
``fixed + batch · per_sample`` bytes; the chain is frugal when that exceeds
:attr:`InvertibleSequential.frugal_threshold_bytes` (default :data:`FRUGAL_THRESHOLD_BYTES`,
1 GiB). ``memory_frugal=True`` / ``False`` forces either mode.

Limitations: double backward (``create_graph=True``) is not supported in frugal mode (use
``memory_frugal=False``); gradients agree with plain autograd up to the round-off of the
input reconstruction (≈1e-12 relative in float64).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from devito_uq.errors import InvalidArgumentError, InvalidDtypeError, InvalidShapeError

__all__ = [
    "FRUGAL_THRESHOLD_BYTES",
    "InvertibleModule",
    "InvertibleSequential",
    "check_input",
    "check_ndim",
    "sum_but_batch",
]

#: Default activation size (bytes a plain training pass would keep) above which
#: ``memory_frugal="auto"`` recomputes instead of storing.
FRUGAL_THRESHOLD_BYTES = 2**30


def sum_but_batch(v: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the first: ``[batch, ...] -> [batch]``."""
    return v.sum(dim=1) if v.dim() == 2 else v.reshape(v.shape[0], -1).sum(dim=1)


def check_ndim(ndim: object, allowed: tuple[int, ...] = (0, 1, 2), who: str = "") -> int:
    """``ndim`` (number of spatial axes) if it is one of ``allowed``."""
    if isinstance(ndim, bool) or ndim not in allowed:
        what = "0 (vectors), 1 or 2" if allowed == (0, 1, 2) else " or ".join(map(str, allowed))
        prefix = f"{who}: " if who else ""
        raise InvalidArgumentError(f"{prefix}ndim must be {what}, got {ndim!r}")
    return int(ndim)


def check_input(
    x: object, who: str, channels: int | None, ndim: int, factor: int = 1
) -> torch.Tensor:
    """The one shape check of devito_uq.flows: ``x`` is a floating tensor
    ``[batch, channels, *spatial]`` with ``ndim`` spatial axes (``channels=None``: any
    count), every spatial size divisible by ``factor``. Raises a DevitoUQError subclass
    naming ``who`` and the shape it got."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{who} input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidDtypeError(f"{who} input must be floating point, got {x.dtype}")
    if x.dim() != ndim + 2:
        want = "[batch, n]" if ndim == 0 else f"[batch, channel] + {ndim} spatial sizes"
        raise InvalidShapeError(f"{who} expects {want}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise InvalidShapeError(
            f"{who} expects {channels} channels (vector length for ndim=0), "
            f"got shape {tuple(x.shape)}"
        )
    if factor > 1 and any(s % factor for s in x.shape[2:]):
        raise InvalidShapeError(_divisibility_message(who, tuple(x.shape[2:]), factor))
    return x


def _divisibility_message(who: str, spatial: tuple[int, ...], factor: int) -> str:
    """The error for spatial sizes a multiscale network cannot squeeze, with the fix."""
    down = tuple(s // factor * factor for s in spatial)
    up = tuple(-(-s // factor) * factor for s in spatial)
    fix = f"pad it to {up}" if min(down) == 0 else f"crop the input to {down} or pad it to {up}"
    if len(spatial) == 2:
        fix += (
            ", or use devito_uq.flows.ImageFlow, which pads any 2D grid automatically and "
            "samples [n, nx, nz]"
        )
    # multiscale networks halve every spatial size once per level: factor = 2**levels
    return f"{who}: spatial sizes must be divisible by {factor}, got {spatial}; {fix}"


class InvertibleModule(nn.Module):
    """Base class: ``y, logdet = m(x, c=None)``; ``x, logdet = m.inverse(y, c=None)``.

    Subclasses implement ``_forward`` and ``_inverse`` (plain autograd, no frugal logic).
    """

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(x, c)

    def inverse(
        self, y: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._inverse(y, c)

    def _forward(self, x, c):  # pragma: no cover - abstract
        raise NotImplementedError

    def _inverse(self, y, c):  # pragma: no cover - abstract
        raise NotImplementedError

    def _recompute(self, out, c, inverse: bool):
        """Rebuild this layer's input from its output and recompute it under autograd.

        ``out`` is the layer's output on the chain side (``y`` for a forward chain, ``x``
        when the chain runs inverse). Returns ``(inp, parts, out2, logdet2, assemble)``: the
        rebuilt input (detached); leaf tensors requiring grad; the recomputed output and
        logdet with their graph to ``parts``, ``c`` and the parameters; and a function
        mapping the gradients of ``parts`` to the gradient of ``inp`` (None: concatenate
        along channels). Layers override this to share work between the rebuild and the
        recomputation (couplings evaluate their conditioner once).
        """
        with torch.no_grad():
            inp, _ = self._forward(out, c) if inverse else self._inverse(out, c)
        leaf = inp.detach().requires_grad_(True)
        out2, ld2 = self._inverse(leaf, c) if inverse else self._forward(leaf, c)
        return inp, [leaf], out2, ld2, None


class InvertibleSequential(InvertibleModule):
    """A chain of invertible layers with switchable memory-frugal backpropagation.

    Parameters
    ----------
    layers : InvertibleModule
        Layers applied in order by ``forward`` and in reverse order by ``inverse``.
    memory_frugal : bool or "auto"
        True: training passes keep only the chain's output and rebuild intermediate states
        by inversion during backward. False: plain autograd. ``"auto"`` (default): frugal
        when plain autograd would keep more than ``frugal_threshold_bytes`` of activations
        for the batch at hand (see the module docstring). Settable afterwards through the
        ``memory_frugal`` attribute.
    """

    #: Threshold of the ``"auto"`` rule in bytes; set per network to change it.
    frugal_threshold_bytes: int = FRUGAL_THRESHOLD_BYTES

    def __init__(self, *layers: InvertibleModule, memory_frugal: bool | str = "auto") -> None:
        super().__init__()
        if not layers:
            raise InvalidArgumentError("InvertibleSequential needs at least one layer, got none")
        for layer in layers:
            if not isinstance(layer, InvertibleModule):
                raise InvalidArgumentError(
                    f"every layer must be an InvertibleModule, got {type(layer).__name__}"
                )
        self.layers = nn.ModuleList(layers)
        self.memory_frugal = memory_frugal
        self._saved_bytes: dict = {}  # "auto": (fixed, per-sample) bytes by input signature
        # ActNorm-like submodules (an ``initialized`` flag buffer); the list of modules is
        # fixed, their buffers are not (``.to()`` replaces them), so read the flag each time
        self._init_modules = [
            m for m in self.modules() if isinstance(getattr(m, "initialized", None), torch.Tensor)
        ]

    @property
    def memory_frugal(self) -> bool | str:
        """True, False or ``"auto"`` (see the class docstring)."""
        return self._memory_frugal

    @memory_frugal.setter
    def memory_frugal(self, value: bool | str) -> None:
        if not (isinstance(value, bool) or value == "auto"):
            raise InvalidArgumentError(f"memory_frugal={value!r} must be True, False or 'auto'")
        self._memory_frugal = value

    def skip_data_init(self) -> InvertibleSequential:
        """Mark every ActNorm as initialized so it keeps its identity initialization instead
        of fitting the first batch (useful when that batch is small). Returns ``self``."""
        for m in self.modules():
            flag = getattr(m, "initialized", None)
            if isinstance(flag, torch.Tensor):
                flag.fill_(True)
        return self

    # -- hooks for subclasses -------------------------------------------------------------
    def _check(self, x: torch.Tensor, c: torch.Tensor | None, inverse: bool) -> None:
        """Validate user input (subclasses raise DevitoUQError subclasses)."""

    # -- plain passes ---------------------------------------------------------------------
    # The log-determinants are summed once at the end (one stack and one sum instead of an
    # addition per layer: fewer autograd nodes in small-tensor, launch-bound steps).
    def _forward(self, x, c):
        lds = []
        for layer in self.layers:
            x, ld = layer._forward(x, c)
            lds.append(ld)
        return x, _sum_logdets(lds)

    def _inverse(self, y, c):
        lds = []
        # a tuple: ModuleList has no __reversed__, and its indexing costs a few µs a layer
        for layer in reversed(tuple(self.layers)):
            y, ld = layer._inverse(y, c)
            lds.append(ld)
        return y, _sum_logdets(lds)

    def leaves(self) -> list[InvertibleModule]:
        """The chain flattened to its non-sequential layers (the units recomputed in backward)."""
        out: list[InvertibleModule] = []
        for layer in self.layers:
            leaves = getattr(layer, "leaves", None)
            out.extend(leaves() if leaves is not None else [layer])
        return out

    # -- public passes ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None):
        """``y, logdet = net(x, c)``; logdet = log|det ∂y/∂x|, shape ``[batch]``."""
        return self._run(x, c, inverse=False)

    def inverse(self, y: torch.Tensor, c: torch.Tensor | None = None):
        """``x, logdet = net.inverse(y, c)``; logdet = log|det ∂x/∂y|, shape ``[batch]``."""
        return self._run(y, c, inverse=True)

    def _run(self, x, c, inverse: bool):
        self._check(x, c, inverse)
        if any(not bool(m.initialized) for m in self._init_modules):
            # Data-dependent initialization (ActNorm) happens once, in a plain pass without
            # autograd, so the frugal Function never sees parameters change under it.
            with torch.no_grad():
                self._inverse(x, c) if inverse else self._forward(x, c)
        # ``any`` over the parameter generator stops at the first trainable one; the full
        # list (a walk over every submodule) is built only for a frugal pass.
        wants_grad = torch.is_grad_enabled() and (
            x.requires_grad
            or (c is not None and c.requires_grad)
            or any(p.requires_grad for p in self.parameters())
        )
        if wants_grad and self._frugal_for(x, c, inverse):
            return _FrugalChain.apply(self, inverse, x, c, *self.parameters())
        return self._inverse(x, c) if inverse else self._forward(x, c)

    def _frugal_for(self, x: torch.Tensor, c: torch.Tensor | None, inverse: bool) -> bool:
        """Whether this training pass runs frugal (resolves ``"auto"``)."""
        if self._memory_frugal != "auto":
            return self._memory_frugal
        key = (inverse, tuple(x.shape[1:]), x.dtype, x.device.type)
        key += (None,) if c is None else (tuple(c.shape[1:]), c.shape[0] == x.shape[0])
        if key not in self._saved_bytes:
            self._saved_bytes[key] = self._measure_saved_bytes(x, c, inverse)
        fixed, per_sample = self._saved_bytes[key]
        return fixed + per_sample * x.shape[0] > self.frugal_threshold_bytes

    def _measure_saved_bytes(self, x, c, inverse) -> tuple[int, int]:
        """Bytes plain autograd saves for a batch of 1 and of 2 → (fixed, per sample)."""
        params = {p.untyped_storage().data_ptr() for p in self.parameters()}
        counts = []
        for n in (1, 2):
            seen: dict[tuple[int, int], int] = {}

            def pack(t, seen=seen):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in params:
                    seen[ptr, t.numel()] = t.numel() * t.element_size()
                return t

            xs = torch.cat([x[:1].detach()] * n)
            cs = None if c is None else torch.cat([c[:1].detach()] * n)
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _same):
                self._inverse(xs, cs) if inverse else self._forward(xs, cs)
            counts.append(sum(seen.values()))
        per_sample = max(counts[1] - counts[0], 0)
        return max(counts[0] - per_sample, 0), per_sample


def _sum_logdets(lds: list[torch.Tensor]) -> torch.Tensor:
    return lds[0] if len(lds) == 1 else torch.stack(lds).sum(0)


def _same(t):
    return t


def _grad_pairs(outputs, grads):
    """Keep (output, cotangent) pairs whose output is part of the local graph."""
    outs, gs = [], []
    for o, g in zip(outputs, grads):
        if o.requires_grad:
            outs.append(o)
            gs.append(g)
    return outs, gs


class _FrugalChain(torch.autograd.Function):
    """Run an InvertibleSequential keeping only its output; rebuild inputs in backward."""

    @staticmethod
    def forward(ctx, seq, inverse, x, c, *params):
        with torch.no_grad():
            y, logdet = seq._inverse(x, c) if inverse else seq._forward(x, c)
        ctx.seq = seq
        ctx.inverse = inverse
        # Inputs are rebuilt from the current parameters: a parameter changed in place
        # between forward and backward would give silently wrong gradients (plain autograd
        # raises for the same reason), so remember their versions.
        ctx.versions = [p._version for p in params]
        ctx.save_for_backward(y, c)
        return y, logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gld):
        seq: InvertibleSequential = ctx.seq
        y, c = ctx.saved_tensors
        params = list(seq.parameters())
        if [p._version for p in params] != ctx.versions:
            raise RuntimeError(
                "memory-frugal backward: a parameter of the network was modified in place "
                "after the forward pass (e.g. optimizer.step() before backward()); inputs "
                "cannot be rebuilt by inversion"
            )
        index = {id(p): i for i, p in enumerate(params)}
        pgrads: list[torch.Tensor | None] = [None] * len(params)
        need_c = c is not None and ctx.needs_input_grad[3]
        gc = None
        leaves = seq.leaves()
        # Walk from the output back to the input. In the inverse direction the chain ran the
        # leaves in reverse order, so the output side is the first leaf.
        order = leaves if ctx.inverse else list(reversed(leaves))
        cur = y.detach()
        cd = c.detach().requires_grad_(True) if need_c else c
        for k, leaf in enumerate(order):
            last = k == len(order) - 1
            need_x = not last or ctx.needs_input_grad[2]
            lparams = [p for p in leaf.parameters() if p.requires_grad]
            with torch.enable_grad():
                prev, parts, out, ld, assemble = leaf._recompute(cur, cd, ctx.inverse)
                inputs = (parts if need_x else []) + ([cd] if need_c else []) + lparams
                outs, gs = _grad_pairs((out, ld), (gy, gld))
                if inputs and outs:
                    grads = torch.autograd.grad(outs, inputs, gs, allow_unused=True)
                else:
                    grads = [None] * len(inputs)
            pos = 0
            if need_x:
                pos = len(parts)
                gparts = [
                    g if g is not None else torch.zeros_like(t) for g, t in zip(grads[:pos], parts)
                ]
                if assemble is not None:
                    gy = assemble(gparts)
                else:
                    gy = gparts[0] if pos == 1 else torch.cat(gparts, dim=1)
            if need_c:
                if grads[pos] is not None:
                    gc = grads[pos] if gc is None else gc + grads[pos]
                pos += 1
            for p, g in zip(lparams, grads[pos:]):
                if g is None:
                    continue
                i = index[id(p)]
                pgrads[i] = g if pgrads[i] is None else pgrads[i] + g
            cur = prev
        gx = gy if ctx.needs_input_grad[2] else None
        return (None, None, gx, gc, *pgrads)
