"""devito_uq.inference: likelihoods, priors, variational inference and Langevin/MAP baselines.

Plot helpers live in :mod:`devito_uq.inference.plotting` and
:mod:`devito_uq.inference.diagnostics.plots` (not imported here, so that importing the
package does not load matplotlib). Diagnostics (SBC, expected coverage, TARP, UCE, image
metrics) are in :mod:`devito_uq.inference.diagnostics`; :mod:`devito_uq.inference.calibration`
runs them over many truths.
"""

from devito_uq.inference.amortized import AmortizedPosterior
from devito_uq.inference.amortized_correction import ConditionedFlow, LatentCorrection
from devito_uq.inference.calibration import load_calibration, run_calibration
from devito_uq.inference.curvature import (
    ProductConvolution,
    WhitenedPrecision,
    product_convolution,
    relative_operator_error,
)
from devito_uq.inference.diagnostics import (
    CachedDraws,
    CalibrationResult,
    image_metrics,
    truth_statistics,
    window_mean,
)
from devito_uq.inference.flow_mcmc import (
    FlowMCMCResult,
    FlowParameterization,
    refine_with_mcmc,
    split_rhat,
)
from devito_uq.inference.laplace import DiagonalSqrt, LaplaceParameterization, low_rank_eigh
from devito_uq.inference.likelihood import (
    GaussianLikelihood,
    RankSummedLikelihood,
    sigma_from_snr,
)
from devito_uq.inference.map import MAPResult, map_estimate
from devito_uq.inference.mcmc import MALA, SGLD, MCMCResult
from devito_uq.inference.parameterization import Parameterization
from devito_uq.inference.pcn import PCN
from devito_uq.inference.priors import (
    FlowPrior,
    GaussianPrior,
    Prior,
    SmoothnessPrior,
    TotalVariationPrior,
)
from devito_uq.inference.priors_gaussian import CorrelatedGaussianPrior
from devito_uq.inference.problems import (
    LinearGaussianProblem,
    MatrixOperator,
    RingMixture,
    linear_gaussian_problem,
)
from devito_uq.inference.rto import (
    CGResult,
    RTOResult,
    conjugate_gradient,
    monte_carlo_std_error,
    randomize_then_optimize,
)
from devito_uq.inference.summary import PosteriorSummary, effective_sample_size, summarize
from devito_uq.inference.target import PosteriorTarget, TargetTerms
from devito_uq.inference.variational import VariationalPosterior

__all__ = [
    "GaussianLikelihood",
    "RankSummedLikelihood",
    "sigma_from_snr",
    "Prior",
    "GaussianPrior",
    "SmoothnessPrior",
    "TotalVariationPrior",
    "CorrelatedGaussianPrior",
    "FlowPrior",
    "Parameterization",
    "LaplaceParameterization",
    "DiagonalSqrt",
    "low_rank_eigh",
    "ProductConvolution",
    "WhitenedPrecision",
    "product_convolution",
    "relative_operator_error",
    "conjugate_gradient",
    "CGResult",
    "randomize_then_optimize",
    "RTOResult",
    "monte_carlo_std_error",
    "PosteriorTarget",
    "TargetTerms",
    "VariationalPosterior",
    "AmortizedPosterior",
    "ConditionedFlow",
    "LatentCorrection",
    "MALA",
    "PCN",
    "SGLD",
    "MCMCResult",
    "FlowParameterization",
    "FlowMCMCResult",
    "refine_with_mcmc",
    "split_rhat",
    "map_estimate",
    "MAPResult",
    "PosteriorSummary",
    "summarize",
    "effective_sample_size",
    "LinearGaussianProblem",
    "MatrixOperator",
    "linear_gaussian_problem",
    "RingMixture",
    "run_calibration",
    "load_calibration",
    "CalibrationResult",
    "truth_statistics",
    "CachedDraws",
    "image_metrics",
    "window_mean",
]
