r"""Summary networks for amortized posteriors: learned maps from the raw condition (data or
a physics summary of them) to what a conditional flow reads, trained jointly with the flow
by maximum likelihood (Radev et al. 2020, BayesFlow; Siahkoohi et al. 2023).

* :class:`ImageSummary`: image → feature image on the same grid, for
  :class:`~devito_uq.flows.ConditionalImageFlow` (e.g. the migrated image ``Jᵀd``, whose
  posterior mean is a non-local deconvolution of it: a residual stack of dilated 3×3
  convolutions whose receptive field doubles with every block of a cycle).
* :class:`TraceSummary`: a gather of traces ``[b, p, nt]`` (e.g. AVP data, ``p`` ray
  parameters, ``nt`` time samples) → a vector ``[b, features]`` for the vector
  :class:`~devito_uq.flows.ConditionalHINT`: strided 1D convolutions over time with the
  traces as channels, then a small MLP on the flattened result (no global pooling: arrival
  time is depth, and the posterior must know where an event sits).

Both keep a linear path from input to output at initialization (a 1×1 skip for images, a
last layer that is not zeroed for traces), so training starts from a useful condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.validation import (
    check_bool,
    check_int,
    check_int_tuple,
    check_nonnegative_int,
    check_positive_int,
)

__all__ = ["ImageSummary", "TraceSummary"]


def _check_batch(x: object, who: str, want: tuple[int, ...]) -> torch.Tensor:
    """``x`` is a floating tensor ``[b, *want]`` (``None`` entries: any size)."""
    shape = "[b, " + ", ".join("*" if w is None else str(w) for w in want) + "]"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"{x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidArgumentError(f"{who} expects a floating tensor {shape}, got {got}")
    ok = x.dim() == len(want) + 1 and all(w is None or s == w for s, w in zip(x.shape[1:], want))
    if not ok:
        raise InvalidShapeError(f"{who} expects {shape}, got shape {tuple(x.shape)}")
    return x


def _block(spatial: nn.Module, pointwise: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return pointwise(F.silu(spatial(h)))


class ImageSummary(nn.Module):
    """Residual CNN: image ``[b, in_channels, h, w]`` → features ``[b, out_channels, h, w]``.

    ``inp`` (3×3, ``in → hidden``), then ``depth`` residual blocks
    ``h ← h + W₁(silu(W_d(silu(h))))`` with ``W_d`` a 3×3 convolution of dilation ``d`` and
    ``W₁`` a zero-initialized 1×1 convolution, then ``out`` (1×1, ``hidden → out``) plus a
    1×1 linear skip from the input. Zero padding keeps the grid; the receptive field is
    ``3 + 2·Σ d`` pixels (default dilations ``1, 2, 4, 8, 1, 2, …``: 33 pixels at depth 4,
    63 at depth 8).

    Parameters
    ----------
    in_channels, out_channels, hidden, depth : int
        Channel counts and number of residual blocks (``depth >= 0``).
    dilations : sequence of int, optional
        One dilation per block (default ``2**(i % 4)``).
    memory_frugal : bool
        Recompute each block in backward instead of keeping its activations
        (``torch.utils.checkpoint``; same gradients, one extra forward): the summary's
        activations otherwise dominate a memory-frugal flow's training step.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 32,
        depth: int = 4,
        dilations: Sequence[int] | None = None,
        memory_frugal: bool = False,
    ) -> None:
        super().__init__()
        self.memory_frugal = check_bool("memory_frugal", memory_frugal)
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        hidden = check_positive_int("hidden", hidden)
        depth = check_nonnegative_int("depth", depth)
        if dilations is None:
            dilations = tuple(2 ** (i % 4) for i in range(depth))
        dilations = check_int_tuple("dilations", dilations, depth, minimum=1)
        self.dilations = dilations
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.spatial = nn.ModuleList(
            nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d) for d in dilations
        )
        self.pointwise = nn.ModuleList(nn.Conv2d(hidden, hidden, 1) for _ in dilations)
        for conv in self.pointwise:  # every block starts as the identity
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.out = nn.Conv2d(hidden, out_channels, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[b, out_channels, h, w]`` of ``x [b, in_channels, h, w]``."""
        x = _check_batch(x, "ImageSummary", (self.in_channels, None, None))
        h = F.silu(self.inp(x))
        frugal = self.memory_frugal and torch.is_grad_enabled()
        for spatial, pointwise in zip(self.spatial, self.pointwise):
            if frugal:
                h = h + checkpoint(_block, spatial, pointwise, h, use_reentrant=False)
            else:
                h = h + _block(spatial, pointwise, h)
        return self.out(F.silu(h)) + self.skip(x)

    def receptive_field(self) -> int:
        """Side of the square of input pixels one output pixel depends on."""
        return 3 + 2 * sum(self.dilations)

    def extra_repr(self) -> str:
        frugal = ", memory_frugal=True" if self.memory_frugal else ""
        return f"{self.in_channels} → {self.out_channels}, dilations={self.dilations}{frugal}"


class TraceSummary(nn.Module):
    """Gather ``[b, n_traces, n_time]`` → feature vector ``[b, features]``.

    Strided convolutions over time (kernel ``2·stride``, stride ``stride``, the traces as
    input channels, SiLU) shorten the time axis by ``stride`` per layer until at most
    ``length`` samples remain; the result ``[b, hidden, L]`` is flattened and mapped by
    ``Linear(hidden·L, hidden) → SiLU → Linear(hidden, features)``.

    Parameters
    ----------
    n_traces, n_time : int
        Traces per gather (e.g. ray parameters) and time samples per trace.
    features : int
        Output length (the ``cond_channels`` of the flow that reads it).
    hidden : int
        Channels of the convolutions and width of the MLP.
    stride, length : int
        Time decimation per layer (>= 2) and the longest time axis left for the MLP.

    Attributes: ``lengths`` (time axis after each layer).
    """

    def __init__(
        self,
        n_traces: int,
        n_time: int,
        features: int,
        hidden: int = 32,
        stride: int = 8,
        length: int = 16,
    ) -> None:
        super().__init__()
        self.n_traces = check_positive_int("n_traces", n_traces)
        self.n_time = check_positive_int("n_time", n_time)
        self.features = check_positive_int("features", features)
        hidden = check_positive_int("hidden", hidden)
        stride = check_int("stride", stride, minimum=2)
        length = check_positive_int("length", length)
        convs, lengths, ch, n = [], [], n_traces, n_time
        while n > length:
            k = min(2 * stride, n)
            convs.append(nn.Conv1d(ch, hidden, k, stride=stride))
            n = (n - k) // stride + 1
            ch = hidden
            lengths.append(n)
        self.convs = nn.ModuleList(convs)
        self.lengths = tuple(lengths)
        self.mlp = nn.Sequential(nn.Linear(ch * n, hidden), nn.SiLU(), nn.Linear(hidden, features))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """Features ``[b, features]`` of gathers ``d [b, n_traces, n_time]``."""
        h = _check_batch(d, "TraceSummary", (self.n_traces, self.n_time))
        for conv in self.convs:
            h = F.silu(conv(h))
        return self.mlp(h.flatten(1))

    def extra_repr(self) -> str:
        return f"[{self.n_traces}, {self.n_time}] → {self.features}, time lengths={self.lengths}"
