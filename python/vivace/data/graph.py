from typing import Sequence, Tuple

import numpy as np
from vesin import NeighborList


def neighbor_graph(
    positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], r_max: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Full neighbor list (both i->j and j->i) of pairs closer than r_max, with periodic images.

    Returns edge_index (2, E) int64 (row 0 centers i, row 1 neighbors j) and cartesian shifts (E, 3) so that
    r_ij = x_j - x_i + shift_ij. Cell vectors are rows (ASE convention).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions contain NaN or infinity")
    pbc = [bool(p) for p in pbc]
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    box = cell if any(pbc) else np.zeros((3, 3))
    if any(pbc) and abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError("a periodic structure needs a cell with non-zero volume")
    i, j, S = NeighborList(cutoff=float(r_max), full_list=True).compute(
        points=positions, box=box, periodic=pbc, quantities="ijS"
    )
    edge_index = np.stack([i, j]).astype(np.int64)
    shifts = S.astype(np.float64) @ cell
    return edge_index, shifts
