"""Pieces both models share: per-edge-type cutoffs, per-type neighbor normalisation, the energy head."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from ase.data import atomic_numbers
from e3nn import o3
from torch import nn

from ..nn import BesselBasis, PolynomialCutoff

from ..nn.scatter import scatter_sum
from ..nn.zbl import ZBL
from ..units import unit_style
from .scale_shift import PerSpeciesScaleShift

CutoffSpec = Dict[str, Union[float, Dict[str, float]]]
def cutoff_matrix(type_names: List[str], r_max: float, edge_type_cutoffs: Optional[CutoffSpec]) -> Optional[torch.Tensor]:
    """(T, T) cutoffs, row = center type, column = neighbor type, from {"H": {"O": 4.0}, "O-O": 3.5, "C": 4.5}.

    "A-B" or {"A": {"B": r}} sets the pair A-B (both directions); "A": r sets every pair with A as center.
    Unset pairs keep r_max. None when no cutoffs are given.
    """
    if not edge_type_cutoffs:
        return None
    index = {name: k for k, name in enumerate(type_names)}
    matrix = torch.full((len(type_names), len(type_names)), float(r_max), dtype=torch.float64)

    def lookup(name: str) -> int:
        if name not in index:
            raise ValueError(f"edge_type_cutoffs names element '{name}', which is not in type_names {type_names}")
        return index[name]

    def set_pair(a: str, b: str, value) -> None:
        value = float(value)
        if not 0.0 < value <= r_max:
            raise ValueError(f"edge_type_cutoffs {a}-{b} = {value} must be in (0, r_max = {r_max}]")
        matrix[lookup(a), lookup(b)] = value
        matrix[lookup(b), lookup(a)] = value

    for key, value in edge_type_cutoffs.items():
        if isinstance(value, dict):
            for other, v in value.items():
                set_pair(key, other, v)
        elif "-" in key:
            set_pair(*key.split("-", 1), value)
        else:
            for other in type_names:
                set_pair(key, other, value)
    return matrix


def per_type(value: Union[float, List[float]], num_types: int, what: str) -> torch.Tensor:
    values = [float(value)] * num_types if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != num_types or min(values) <= 0:
        raise ValueError(f"{what} needs one positive number, or one per type ({num_types})")
    return torch.tensor(values, dtype=torch.get_default_dtype())


class EdgeGeometry(nn.Module):
    """What both models first compute per edge: the length r and the envelope u(r / r_cut) (float64, with
    per-edge-type cutoffs where given), the Bessel basis times the envelope and the spherical harmonics
    (model dtype)."""

    def __init__(
        self,
        type_names: List[str],
        r_max: float,
        l_max: int,
        num_bessel: int,
        polynomial_p: int,
        edge_type_cutoffs: Optional[CutoffSpec],
    ):
        super().__init__()
        self.register_buffer("r_cut", cutoff_matrix(type_names, r_max, edge_type_cutoffs))
        self.bessel = BesselBasis(r_max, num_bessel)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)
        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")

    def forward(
        self, edge_vectors: torch.Tensor, center_type: torch.Tensor, neighbor_type: torch.Tensor, dtype: torch.dtype
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        r = torch.linalg.vector_norm(edge_vectors, dim=-1)
        r_cut = None if self.r_cut is None else self.r_cut[center_type, neighbor_type]
        envelope = self.cutoff(r, r_cut)
        basis = self.bessel(r.to(dtype)) * envelope.to(dtype).unsqueeze(-1)
        return r, envelope, basis, self.sh(edge_vectors.to(dtype))


def reverse_pair_rows(edge_index: torch.Tensor, num_nodes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, slot): what depends on an edge's length only is the same for i -> j and j -> i, so it is
    computed once per pair. `rows` are the edges it is computed for, and edge e reads row slot[e] of the
    result. An edge i -> j with i > j whose pair (i, j) and reverse (j, i) each occur exactly once reads its
    reverse's row; every other edge (a pair repeated through periodic images, a neighbor that is no center)
    has a row of its own."""
    center, neighbor = edge_index[0], edge_index[1]
    key = center * num_nodes + neighbor
    sorted_key, order = torch.sort(key)
    # a key occurs once where it differs from both sorted neighbours (cyclically: the first and last keys agree
    # only when all do; a graph of one edge shares nothing anyway)
    alone = (sorted_key != sorted_key.roll(1)) & (sorted_key != sorted_key.roll(-1))
    once = torch.zeros_like(alone).index_put_((order,), alone)
    reverse_key = neighbor * num_nodes + center
    reverse = order.index_select(0, torch.searchsorted(sorted_key, reverse_key).clamp(max=key.shape[0] - 1))
    shared = once & once.index_select(0, reverse) & (key.index_select(0, reverse) == reverse_key) & (center > neighbor)
    own = ~shared
    rows = torch.nonzero(own).squeeze(1)
    row_of_edge = torch.cumsum(own.to(torch.int64), 0) - 1
    slot = torch.where(shared, row_of_edge.index_select(0, reverse), row_of_edge)
    return rows, slot


COHESION_FORMS = ("sqrt", "quadratic", "none")


def cohesion_profile(x: torch.Tensor, form: str, eps: float = 0.1) -> torch.Tensor:
    """g(x) of the cohesion baseline c g(x), x = rho / rho0: g(0) = 0, g(1) = 1.

    "sqrt": (sqrt(x + eps^2) - eps) / (sqrt(1 + eps^2) - eps), the second-moment (Finnis-Sinclair, tight
    binding) law: cohesion grows as the square root of the coordination, so an atom losing a neighbor pays to
    first order (a vacancy alone costs about half the cohesion c), and the attraction it exerts is left for the
    network's pair repulsion to balance; eps keeps the force's derivative finite as x -> 0.
    "quadratic": x (2 - x), stationary at x = 1 (no force or stress at the mean coordination), but a vacancy
    costs it only to second order (under a tenth of c), leaving the network almost all of the defect energy.
    ("none", the default, has no baseline: EnergyHead takes no cohesion with it.)"""
    if form == "sqrt":
        return (torch.sqrt(x + eps * eps) - eps) / ((1.0 + eps * eps) ** 0.5 - eps)
    if form == "quadratic":
        return x * (2.0 - x)
    raise ValueError("cohesion_profile: the form must be sqrt or quadratic")


class EnergyHead(nn.Module):
    """Per-species scale and shift (float64), plus two optional sums over a center's edges: the cohesion
    baseline and the ZBL repulsion (`zbl`: everywhere inside the cutoff; else, given the training data's
    shortest distance per pair of types, `core_distances`, only as a core well below them: nn.zbl).

    The baseline gives atom i the energy c[Z_i] g(x), x = rho_i / rho0[Z_i], rho_i = sum_j u(r_ij) its
    coordination (u the envelope), g = cohesion_profile: c at the training data's mean coordination rho0, 0
    for an atom without neighbors. With isolated-atom energies as shifts it carries the mean cohesion (c < 0,
    fitted to the training energies; statistics.cohesion_baseline), so an atom's energy rises towards its
    isolated value as its neighbors leave."""

    def __init__(
        self,
        type_names: List[str],
        energy_scale: List[float],
        energy_shift: List[float],
        zbl: bool,
        units: str,
        cohesion: List[float] = [],
        mean_coordination: List[float] = [],
        cohesion_form: str = "none",
        core_distances: Sequence[Sequence[float]] = (),
    ):
        super().__init__()
        unit_style(units)  # refuses a style vivace does not support, by name
        if cohesion_form not in COHESION_FORMS:
            raise ValueError(f"cohesion_form must be one of {', '.join(COHESION_FORMS)}, not '{cohesion_form}'")
        if cohesion and cohesion_form == "none":
            raise ValueError("a cohesion baseline needs a cohesion_form (sqrt or quadratic), not 'none'")
        self.cohesion_form = cohesion_form
        self.scale_shift = PerSpeciesScaleShift(len(type_names), energy_scale, energy_shift)
        num_types = len(type_names)
        if len(cohesion) != len(mean_coordination) or (cohesion and len(cohesion) != num_types):
            raise ValueError(f"cohesion and mean_coordination need one value per type ({num_types}), or none")
        if mean_coordination and min(mean_coordination) <= 0:
            raise ValueError("mean_coordination must be positive")
        self.has_cohesion = bool(cohesion)
        self.register_buffer("cohesion", torch.tensor(cohesion or [0.0], dtype=torch.float64))
        self.register_buffer("mean_coordination", torch.tensor(mean_coordination or [1.0], dtype=torch.float64))
        self.zbl = None
        elements = all(n in atomic_numbers for n in type_names)
        if zbl:
            if not elements:
                unknown = [n for n in type_names if n not in atomic_numbers]
                raise ValueError(f"ZBL needs chemical elements as type names; {unknown} are not")
            self.zbl = ZBL([atomic_numbers[n] for n in type_names], units)
        elif len(core_distances) and elements:  # the core is a safeguard: types that are no elements go without
            self.zbl = ZBL([atomic_numbers[n] for n in type_names], units, core=core_distances)

    def forward(
        self,
        energy: torch.Tensor,  # (N,) float64
        atom_types: torch.Tensor,
        r: torch.Tensor,  # (E,) float64
        envelope: torch.Tensor,  # (E,)
        center: torch.Tensor,  # (E,) index into the nodes
        center_type: torch.Tensor,  # (E,)
        neighbor_type: torch.Tensor,  # (E,)
    ) -> torch.Tensor:
        atomic_energy = self.scale_shift(energy, atom_types)
        if self.has_cohesion:
            rho = scatter_sum(envelope.to(torch.float64), center, atomic_energy.shape[0])
            x = rho / self.mean_coordination.to(torch.float64)[atom_types]
            cohesion = self.cohesion.to(torch.float64)[atom_types]
            atomic_energy = atomic_energy + cohesion * cohesion_profile(x, self.cohesion_form)
        if self.zbl is not None:
            pair = self.zbl(r, envelope, center_type, neighbor_type)
            atomic_energy = atomic_energy + scatter_sum(pair, center, atomic_energy.shape[0])
        return atomic_energy
