"""Neural network building blocks of pyrovi's amortized guides and decoders."""

from ._decoder import DecoderSCVI
from ._embedding import Embedding
from ._encoder import VAR_ACTIVATIONS, Encoder, VarActivation, var_activation_name
from ._fc_layers import FCLayers

__all__ = ["FCLayers", "Encoder", "DecoderSCVI", "Embedding", "VAR_ACTIVATIONS", "VarActivation", "var_activation_name"]
