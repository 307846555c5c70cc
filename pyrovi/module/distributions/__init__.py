"""Count likelihoods in scVI's parameterisation (mean, inverse dispersion, gate logits) over Pyro's
own distributions."""

from ._count_likelihoods import (
    COUNT_LIKELIHOODS,
    LikelihoodFn,
    LikelihoodInputs,
    gene_likelihood,
    negative_binomial,
    normal,
    poisson,
    zero_inflated_negative_binomial,
)

__all__ = [
    "negative_binomial",
    "zero_inflated_negative_binomial",
    "poisson",
    "normal",
    "COUNT_LIKELIHOODS",
    "LikelihoodInputs",
    "gene_likelihood",
]
