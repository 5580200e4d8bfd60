"""How a model is evaluated, stated on the model (not by a global flag), and its groups of whole centers.

A model states its math once; its `execution` chooses how that math runs:
- "eager" (the default: training and Python inference): dense batched matrix multiplies, Allegro's tensor
  product grouped by node, and inference in groups of whole centers of `edges_per_group` edges;
- "export" (what `vivace export` traces for AOTInductor): contractions unrolled into gathered products that
  inductor fuses, and no grouping in Python; the C++ core groups, by the artifact's `edges_per_group`.
TorchScript runs the dense path of "eager" without the Python-only parts (grouping).

Every module with an `execution` attribute follows `set_execution`.
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

EXECUTIONS = ("eager", "export")

CenterGroup = Tuple[Tuple[int, int], Tuple[int, int]]  # ((first edge, end edge), (first node, end node))


def set_execution(module: nn.Module, execution: str) -> nn.Module:
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution '{execution}' (one of {', '.join(EXECUTIONS)})")
    for m in module.modules():
        if hasattr(m, "execution"):
            m.execution = execution
    return module


@torch.jit.unused
def in_python(execution: str) -> bool:
    """True where Python-only evaluation may run: eager execution, not traced by torch.compile."""
    return execution == "eager" and not torch.compiler.is_compiling()


@torch.jit.unused
def sorted_by_center(
    edge_vectors: torch.Tensor, edge_index: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The edges in center order (stable) and the permutation applied, None when they already were."""
    if not bool((edge_index[0, 1:] < edge_index[0, :-1]).any()):
        return edge_vectors, edge_index, None
    order = torch.argsort(edge_index[0], stable=True)
    return edge_vectors[order], edge_index[:, order], order


@torch.jit.unused
def center_groups(center: torch.Tensor, num_nodes: int, edges_per_group: int) -> List[CenterGroup]:
    """Edges sorted by center split into groups of whole centers of about `edges_per_group` edges each.
    Each group's nodes run from its first center to its last; nodes without edges may fall between groups."""
    if center.numel() == 0:
        return []
    ends = torch.cumsum(torch.bincount(center, minlength=num_nodes), 0)
    num_edges = int(ends[-1])
    targets = torch.arange(edges_per_group, max(num_edges, edges_per_group), edges_per_group, device=ends.device)
    cuts = torch.unique(torch.searchsorted(ends, targets)).tolist() + [int(center[-1])]
    groups: List[CenterGroup] = []
    e0 = 0
    for last in cuts:
        e1 = int(ends[last])
        if e1 > e0:
            groups.append(((e0, e1), (int(center[e0]), last + 1)))
            e0 = e1
    return groups
