r"""Invertible networks (Glow, HINT, conditional HINT) with memory-frugal backpropagation.

Stable API (other modules rely on it)
-------------------------------------
Networks and layers, all ``torch.nn.Module``::

    y, logdet = net(x, c=None)          # logdet = log|det ∂y/∂x|, shape [batch]
    x, logdet = net.inverse(y, c=None)  # logdet = log|det ∂x/∂y|, shape [batch]
    net.memory_frugal = True / False / "auto"  # rebuild activations by inversion in backward;
                                        # "auto" (default): only above 1 GiB of activations
    net.skip_data_init()                # keep ActNorm at identity instead of fitting 1st batch

    HINT(n, steps=4, hidden=64)                     # vectors / 1D profiles [batch, n], n ≥ 2
    HINT(n, ..., leaf_size=None)                    # recursion leaf chosen from n
    HINT(c, steps, hidden, ndim=1)                  # signals [batch, c, n] (conv conditioners)
    ConditionalHINT(n, cond_channels, steps, hidden)  # p(m | d): net(m, c), c [batch, cond]
    MultiscaleHINT(c, levels, steps, hidden, ndim=1 or 2)
    Glow(c, levels=3, steps=4, hidden=64, ndim=2)   # images [batch, c, h, w]

Distribution (the network maps model m to latent z; sampling runs its inverse)::

    q = Flow(net, shape)                 # shape: event shape of m, e.g. (n,) or (c, h, w)
    m = q.sample(n)                      # [n, *shape], no gradient
    m, log_q = q.rsample_and_log_prob(n) # [n, *shape], [n]; differentiable in net parameters
    log_q = q.log_prob(m)                # [batch]
    q.sample(n, c); q.log_prob(m, c)     # conditional nets: c [n or 1, cond_channels]

    q = ImageFlow((nx, nz), kind="hint" or "glow", levels=2, steps=4, hidden=32)
    m = q.sample(n)                      # [n, nx, nz] on ANY grid: the network runs on
    q.padded_shape                       # the grid padded to multiples of 2**levels;
    m, log_q = q.rsample_and_log_prob(n) # log q(m, ε) − log r(ε), ε the padding, r = N(0, I)
    log_q = q.log_prob(m, n_pad=16)      # importance-sampled over ε (exact if nothing padded)
    save_checkpoint(path, {"flow": q.state_dict()})      # devito_uq.io: hashed, no pickle
    q2.load_state_dict(load_checkpoint(path)["flow"])
    m, log_det = q.from_latent(z)        # z [n, *latent_shape]: log q̃(m) = log p_Z(z) − log_det

Amortized posteriors q(m | c) (conditional.py, summary_nets.py)::

    q = ConditionalImageFlow((nx, nz), cond_channels, kind="hint" or "glow", levels=2,
                             steps=4, hidden=32, summary=None)
    m = q.sample(n, c)                   # c [1 or n, cond_channels, nx, nz] (e.g. Jᵀd)
    m, log_q = q.rsample_and_log_prob(n, c)  # [n, nx, nz], [n]; grads reach c and summary
    log_q = q.log_prob(m, c, n_pad=1)    # ML training loss −log_prob (n_pad=1: the bound
                                         # E_r[log q(m, ε | c) − log r(ε)], exact if unpadded)
    m, log_det = q.from_latent(z, c)     # latent corrections of a trained flow
    ImageSummary(in_channels, out_channels, hidden=32, depth=4)  # [b, C, h, w] → [b, F, h, w]
    ImageSummary(..., memory_frugal=True)  # blocks recomputed in backward (checkpoint)
    TraceSummary(n_traces, n_time, features, hidden=32)  # [b, p, nt] → [b, features] for
                                                         # ConditionalHINT(n, features)

The conditional image flow feeds every coupling its own level of a condition pyramid (the
padded condition squeezed like the model, ConditionalMultiscaleNetwork, LevelCondition).

Layers: ActNorm, InvertibleConv1x1, AffineCoupling, ConditionalAffineCoupling,
HINTCoupling, ConditionalHINTCoupling, HaarSqueeze, Squeeze, Split, chained by
InvertibleSequential. Files: invertible.py (base classes, memory-frugal backprop, the shape
check), layers.py, couplings.py (conditioners, the one coupling skeleton), network.py
(FlowNetwork, multiscale assembly), hint.py, glow.py, flow.py,
image.py (ImageFlow: any grid, by augmentation), conditional.py (ConditionalImageFlow),
summary_nets.py (ImageSummary, TraceSummary). Initialization is close to
the identity (zero last conditioner layer, rotation 1×1 mixing, data-dependent ActNorm on
the first batch it sees, in either direction); coupling log-scales are bounded,
``log s = clamp·tanh(raw/clamp)``.
"""

from devito_uq.flows.conditional import (
    ConditionalImageFlow,
    ConditionalMultiscaleNetwork,
    LevelCondition,
)
from devito_uq.flows.couplings import (
    AffineCoupling,
    ConditionalAffineCoupling,
    Conditioner,
    CouplingBase,
    GroupedLinear,
)
from devito_uq.flows.flow import Flow
from devito_uq.flows.glow import Glow
from devito_uq.flows.hint import (
    HINT,
    ConditionalHINT,
    ConditionalHINTCoupling,
    HINTCoupling,
    MultiscaleHINT,
    default_leaf_size,
)
from devito_uq.flows.image import ImageFlow
from devito_uq.flows.invertible import (
    FRUGAL_THRESHOLD_BYTES,
    InvertibleModule,
    InvertibleSequential,
)
from devito_uq.flows.layers import ActNorm, HaarSqueeze, InvertibleConv1x1, Split, Squeeze
from devito_uq.flows.network import FlowNetwork, multiscale_layers
from devito_uq.flows.summary_nets import ImageSummary, TraceSummary

__all__ = [
    "Flow",
    "ImageFlow",
    "ConditionalImageFlow",
    "ConditionalMultiscaleNetwork",
    "LevelCondition",
    "ImageSummary",
    "TraceSummary",
    "Glow",
    "HINT",
    "ConditionalHINT",
    "MultiscaleHINT",
    "FlowNetwork",
    "multiscale_layers",
    "default_leaf_size",
    "HINTCoupling",
    "ConditionalHINTCoupling",
    "ActNorm",
    "InvertibleConv1x1",
    "Conditioner",
    "GroupedLinear",
    "CouplingBase",
    "AffineCoupling",
    "ConditionalAffineCoupling",
    "HaarSqueeze",
    "Squeeze",
    "Split",
    "InvertibleModule",
    "InvertibleSequential",
    "FRUGAL_THRESHOLD_BYTES",
]
