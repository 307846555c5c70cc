"""Neural network building blocks of pyrovi's amortized guides and decoders."""

from ._decoder import DecoderSCVI
from ._encoder import Encoder
from ._fc_layers import FCLayers

__all__ = ["FCLayers", "Encoder", "DecoderSCVI"]
