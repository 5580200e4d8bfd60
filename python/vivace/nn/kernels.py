"""vivace's torch operators and their plain PyTorch references.

`vivace::channelwise_tp` (C++, libvivace_ops.so next to this package's _core) is Allegro's channel-wise
tensor product of edge features with the density of each edge's center, the gather of the density fused in:

    out[e, k, c] = sum_q coef[q, c] x[e, m_q, c] y[center[e], n_q, c]      entries = [[k_q], [m_q], [n_q]]

Its backward is `vivace::channelwise_tp_backward`; the C++ autograd kernel ties the two together for first
derivatives (forces). `channelwise_tp_reference` is the same operator in PyTorch, differentiable to any order
(training). `vivace::nequip_conv` (and its backward) is NequIP's convolution summed into the centers, in the
same library; its PyTorch form is the model's own `Convolution.messages`. The operators are loaded with the
package, so that exporting traces them and artifacts calling them run in the ASE calculator, the core and
LAMMPS, which load the same library.
"""

import glob
import os

import torch

_LIBRARY = []  # the loaded library's path, once loaded


def library_path() -> str:
    """libvivace_ops.so installed beside the package's _core ('' when the package was not built)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = sorted(glob.glob(os.path.join(here, "libvivace_ops*.so")))
    return found[0] if found else ""


def available() -> bool:
    """True when the operators are registered (loading the library on first call)."""
    if _LIBRARY:
        return True
    path = library_path()
    if not path:
        return False
    torch.ops.load_library(path)
    _register_fakes()
    _LIBRARY.append(path)
    return True


def require() -> None:
    if not available():
        raise RuntimeError(
            "vivace's operators (libvivace_ops.so) are not installed beside the package: build vivace "
            "(pip install . or scripts/setup.sh) to use the fused kernel"
        )


def _register_fakes() -> None:
    """Shapes for tracing (torch.export, make_fx): the outputs' sizes follow the inputs', symbolic ones too."""

    @torch.library.register_fake("vivace::channelwise_tp")
    def _(x, y, center, coef, entries, dim_out):
        return x.new_empty((x.shape[0], dim_out, x.shape[2]))

    @torch.library.register_fake("vivace::channelwise_tp_backward")
    def _(grad, x, y, center, coef, entries, coef_grad):
        return torch.empty_like(x), torch.empty_like(y), torch.empty_like(coef)

    @torch.library.register_fake("vivace::nequip_conv")
    def _(x, sh, w, slot, center, neighbor, norm, cg, entries, components):
        return x.new_empty((norm.shape[0], components.shape[0], x.shape[2]))

    @torch.library.register_fake("vivace::nequip_conv_backward")
    def _(grad, x, sh, w, slot, center, neighbor, norm, cg, entries, components):
        return torch.empty_like(x), torch.empty_like(sh), torch.empty_like(w)


def channelwise_tp(x, y, center, coef, entries, dim_out: int) -> torch.Tensor:
    """The fused C++ operator (first derivatives only)."""
    return torch.ops.vivace.channelwise_tp(x, y, center, coef, entries, dim_out)


def channelwise_tp_reference(x, y, center, coef, entries, dim_out: int) -> torch.Tensor:
    """The same contraction in PyTorch: gather each entry's factors, multiply, add into its output row."""
    k, m, n = entries[0], entries[1], entries[2]
    terms = coef * x.index_select(1, m) * y.index_select(0, center).index_select(1, n)  # (E, Q, C)
    out = torch.zeros(x.shape[0], dim_out, x.shape[2], dtype=terms.dtype, device=terms.device)
    return out.index_add(1, k, terms)
