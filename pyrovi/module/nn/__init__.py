"""Neural network building blocks of pyrovi's amortized guides and decoders."""

from ._decoder import DecoderSCVI
from ._embedding import Embedding
from ._encoder import VAR_ACTIVATIONS, Encoder, VarActivation, var_activation_name
from ._fc_layers import FCLayers
from ._guide_heads import (
    GUIDE_FAMILIES,
    FlowHead,
    FlowPosterior,
    GuideFamily,
    LowRankHead,
    LowRankPosterior,
    check_guide_kwargs,
    encoder_posterior,
    make_guide_head,
)

__all__ = ["FCLayers", "Encoder", "DecoderSCVI", "Embedding", "VAR_ACTIVATIONS", "VarActivation", "var_activation_name",
           "LowRankHead", "FlowHead", "LowRankPosterior", "FlowPosterior"]
