from .mlp import MLP, Linear
from .radial import BesselBasis, PolynomialCutoff
from .scatter import scatter_sum
from .tensor_product import ChannelwiseTensorProduct

__all__ = ["MLP", "Linear", "BesselBasis", "PolynomialCutoff", "scatter_sum", "ChannelwiseTensorProduct"]
