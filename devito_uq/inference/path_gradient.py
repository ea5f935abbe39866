r"""The path-derivative ("sticking the landing") gradient of reverse KL for a flow.

For ``x = T_θ(z)`` the reparameterization gradient of :math:`E_z[\log q_θ(x) - \log
p(x)]` has two parts: the path derivative through ``x`` and the score term
:math:`E_z[\partial_θ \log q_θ(x)|_{x\ \text{fixed}}]`. The score term has expectation
zero, but not variance zero — and at the optimum :math:`q_θ = p` the path derivative is
zero for every ``z`` while the score term is not, so the plain estimator keeps a noise floor
exactly where the fit should settle. Roeder, Wu & Duvenaud (2017) drop it: evaluate
:math:`\log q` at the reparameterized sample with the flow's parameters held constant.
The estimator stays unbiased and its variance vanishes at ``q = p``; for a flow the
constant-parameter density costs one more (normalizing) pass through the network and its
backward (Vaitl, Nicoli, Winkler & Kessel 2022, "Gradients should stay on path", found it
also fits flows better).

References
----------
Roeder, Wu & Duvenaud, 2017, Sticking the landing: simple, lower-variance gradient
estimators for variational inference, NeurIPS.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from devito_uq.errors import InvalidArgumentError

__all__ = ["ESTIMATORS", "frozen_log_prob"]

#: ``VariationalPosterior.fit``'s gradient estimators: the plain reparameterization
#: gradient and the path derivative (score term dropped).
ESTIMATORS = ("reparameterization", "path")


class _LogProb(nn.Module):
    """``flow.log_prob`` as a module's ``forward`` (what ``functional_call`` calls)."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)


def frozen_log_prob(flow: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``log q(x)`` ``[batch]`` through ``flow.log_prob`` with the flow's parameters
    detached: differentiable in ``x`` (and so in the parameters through ``x``'s own
    graph), but with no direct path to the parameters.

    Parameters
    ----------
    flow : nn.Module
        A flow whose ``log_prob`` is the exact density of its ``rsample_and_log_prob``
        draws (``devito_uq.flows.Flow``).
    x : torch.Tensor
        ``[batch, *shape]`` samples, typically ``flow.rsample``'s.

    Returns
    -------
    torch.Tensor
        ``[batch]`` log-densities.

    Raises
    ------
    InvalidArgumentError
        ``flow`` is not an ``nn.Module`` (its parameters cannot be swapped).
    """
    if not isinstance(flow, nn.Module):
        raise InvalidArgumentError(
            f"the path estimator needs an nn.Module flow, got {type(flow).__name__}"
        )
    wrapper = _LogProb(flow)
    frozen = {name: p.detach() for name, p in wrapper.named_parameters()}
    return functional_call(wrapper, frozen, (x,), strict=False)
