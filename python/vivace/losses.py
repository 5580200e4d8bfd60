"""Predictions on a batch (energy, forces, stress), the training loss, and error metrics.

Sign conventions: F = -dE/dx; stress sigma = (1/V) sum_edges r_ij (x) g_ij = -W/V (ASE sign), g_ij = dE/dr_ij.
"""

from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .data import Batch, Structure
from .models import atom_forces
from .units import unit_style


@dataclass
class Prediction:
    energy: torch.Tensor  # (B,) float64
    forces: torch.Tensor  # (N, 3)
    stress: torch.Tensor  # (B, 3, 3); meaningless where the structure has no volume


def predict(edge_force_model: torch.nn.Module, batch: Batch) -> Prediction:
    """Runs an EdgeForceModel (or a DDP wrapper of one) on a batch."""
    vectors = batch.edge_vectors()
    num_nodes = batch.positions.shape[0]
    atomic_energy, edge_forces = edge_force_model(
        vectors, batch.edge_index, batch.atom_types, torch.tensor(num_nodes)
    )
    B = batch.num_graphs
    energy = torch.zeros(B, dtype=torch.float64, device=vectors.device).index_add(0, batch.graph_of_node, atomic_energy)
    per_edge = vectors.unsqueeze(-1) * edge_forces.unsqueeze(-2)
    virial_sum = torch.zeros(B, 3, 3, dtype=torch.float64, device=vectors.device).index_add(0, batch.graph_of_edge, per_edge)
    volume = torch.where(batch.volume > 0, batch.volume, torch.ones_like(batch.volume))
    stress = virial_sum / volume.view(-1, 1, 1)
    return Prediction(energy, atom_forces(edge_forces, batch.edge_index, num_nodes), stress)


@dataclass
class LossDenominators:
    """Normalisation of each loss term over the whole (global) batch, so that a batch split across processes
    gives the same total loss as the batch in one process."""

    energy: float
    forces: float
    stress: float

    @classmethod
    def of(cls, structures: Sequence[Structure]) -> "LossDenominators":
        energy = sum(s.weight for s in structures)
        forces = sum(3 * s.weight * s.num_atoms for s in structures)
        stress = sum(9 * s.weight for s in structures if s.stress is not None and s.volume > 0)
        return cls(max(energy, 1e-300), max(forces, 1e-300), max(stress, 1e-300))


class Loss:
    """weight_E <rho(dE/N / s)> + weight_F <rho(dF / s)> + weight_S <rho(d sigma V/N / s)>, each a
    per-configuration-weighted mean; rho is the square (mse) or the Huber function.

    The stress enters as the virial per atom, d sigma V/N: an energy per atom like the first term, so equal
    weights give the two the same footing (a stress error of 1 meV/A^3 at 12 A^3 per atom weighs as an
    energy error of 12 meV/atom). s is the model's energy scale (the training set's force RMS), so the loss is
    dimensionless: the same data in another energy unit trains to the same model, gradient clipping and
    huber_delta included.
    """

    def __init__(self, energy_weight=1.0, force_weight=1.0, stress_weight=1.0, kind="mse", huber_delta=0.01, scale=1.0):
        self.weights = (float(energy_weight), float(force_weight), float(stress_weight))
        self.kind, self.delta, self.scale = kind, float(huber_delta), float(scale)

    def rho(self, error: torch.Tensor) -> torch.Tensor:
        if self.kind == "huber":
            return F.huber_loss(error, torch.zeros_like(error), reduction="none", delta=self.delta)
        return error.square()

    def __call__(self, pred: Prediction, batch: Batch, denominators: LossDenominators) -> torch.Tensor:
        w_e, w_f, w_s = self.weights
        s = self.scale
        energy_error = (pred.energy - batch.energy) / batch.num_atoms / s
        loss = w_e * (batch.weight * self.rho(energy_error)).sum() / denominators.energy
        atom_weight = batch.weight[batch.graph_of_node]
        loss = loss + w_f * (atom_weight * self.rho((pred.forces - batch.forces) / s).sum(-1)).sum() / denominators.forces
        if w_s > 0 and bool(batch.has_stress.any()):
            mask = batch.has_stress
            volume_per_atom = (batch.volume[mask] / batch.num_atoms[mask]).view(-1, 1, 1)
            stress_error = self.rho((pred.stress[mask] - batch.stress[mask]) * volume_per_atom / s).sum((-1, -2))
            loss = loss + w_s * (batch.weight[mask] * stress_error).sum() / denominators.stress
        return loss


METRICS = ("energy", "total_energy", "force", "stress")


class ErrorSums:
    """Running sums of absolute and squared errors (energy per atom, total energy, force and stress components),
    to be added across batches and processes; `metrics()` gives MAE and RMSE in meV units whatever the model's
    units style."""

    def __init__(self, device=None, units: str = "metal"):
        self.sums = torch.zeros(len(METRICS), 3, dtype=torch.float64, device=device)  # sum |e|, sum e^2, count
        self.mev_per_unit = 1000 * unit_style(units).energy_in_ev

    def add(self, pred: Prediction, batch: Batch) -> None:
        errors = [
            (pred.energy - batch.energy) / batch.num_atoms,
            pred.energy - batch.energy,
            (pred.forces - batch.forces).reshape(-1),
            (pred.stress[batch.has_stress] - batch.stress[batch.has_stress]).reshape(-1),
        ]
        for k, e in enumerate(errors):
            e = e.detach()
            self.sums[k] += torch.stack([e.abs().sum(), e.square().sum(), torch.tensor(float(e.numel()), device=e.device)])

    def metrics(self) -> Dict[str, float]:
        """meV/atom (energy), meV (total_energy), meV/A (force), meV/A^3 (stress); NaN where nothing was seen."""
        out = {}
        for k, name in enumerate(METRICS):
            abs_sum, sq_sum, n = self.sums[k].tolist()
            out[f"{name}_mae"] = self.mev_per_unit * abs_sum / n if n else float("nan")
            out[f"{name}_rmse"] = self.mev_per_unit * (sq_sum / n) ** 0.5 if n else float("nan")
        return out


def predictions(
    edge_force_model, structures: Sequence[Structure], batch_size: int = 8, device: Optional[torch.device] = None
) -> Iterator[Tuple[Prediction, Batch]]:
    """(detached prediction, batch) for consecutive batches of structures."""
    from .data import collate

    for start in range(0, len(structures), batch_size):
        batch = collate(structures[start : start + batch_size]).to(device or "cpu")
        pred = predict(edge_force_model, batch)
        yield Prediction(pred.energy.detach(), pred.forces.detach(), pred.stress.detach()), batch


def evaluate_structures(
    edge_force_model,
    structures: Sequence[Structure],
    batch_size: int = 8,
    device: Optional[torch.device] = None,
    units: str = "metal",
) -> ErrorSums:
    """Error sums of a model (an EdgeForceModel, or any callable with its signature) over labelled structures
    (labels in the model's `units`)."""
    sums = ErrorSums(device, units)
    for pred, batch in predictions(edge_force_model, structures, batch_size, device):
        sums.add(pred, batch)
    return sums
