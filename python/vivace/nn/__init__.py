from .mlp import MLP, Linear
from .radial import BesselBasis, PolynomialCutoff
from .scatter import gather, scatter_sum
from .tensor_product import ChannelwiseTensorProduct

__all__ = ["MLP", "Linear", "BesselBasis", "PolynomialCutoff", "gather", "scatter_sum", "ChannelwiseTensorProduct"]
