"""Where training metrics go: the console, metrics.csv, TensorBoard, and PNG plots at the end."""

import csv
import math
import os
import warnings
from typing import Dict, List, Optional

import numpy as np

COLUMNS = [
    "epoch", "time_s", "lr", "train_loss",
    "energy_mae", "energy_rmse", "total_energy_mae", "total_energy_rmse",
    "force_mae", "force_rmse", "stress_mae", "stress_rmse",
]  # fmt: skip


class MetricsLog:
    """metrics.csv (one row per epoch, validation metrics in meV units) and TensorBoard scalars.

    Opened on a resumed run, rows after `resume_epoch` (written after the last checkpoint) are dropped, and
    TensorBoard purges the same steps, so the logs describe the run that the checkpoints continue.
    """

    def __init__(self, run_dir: str, tensorboard: bool, resume_epoch: int = 0):
        self.path = os.path.join(run_dir, "metrics.csv")
        rows = []
        if resume_epoch and os.path.isfile(self.path):
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=resume_epoch + 1)
            except ImportError:
                warnings.warn("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")

    def write(self, row: Dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow({k: row.get(k, float("nan")) for k in COLUMNS})
        if self.writer is not None:
            epoch = int(row["epoch"])
            for key, value in row.items():
                if key not in ("epoch", "time_s") and not (isinstance(value, float) and math.isnan(value)):
                    group = "train" if key in ("lr", "train_loss") else "validation"
                    self.writer.add_scalar(f"{group}/{key}", value, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str) -> List[Dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def console_line(row: Dict[str, float]) -> str:
    line = (
        f"epoch {int(row['epoch']):4d}  {row['time_s']:7.1f}s  lr {row['lr']:.2e}  loss {row['train_loss']:.4e}  "
        f"val E {row['energy_mae']:.2f} meV/atom  F MAE {row['force_mae']:.1f} RMSE {row['force_rmse']:.1f} meV/A"
    )
    if not math.isnan(row.get("stress_mae", float("nan"))):
        line += f"  S MAE {row['stress_mae']:.2f} meV/A^3"
    return line


def metrics_table(metrics: Dict[str, float], title: str) -> str:
    units = {"energy": "meV/atom", "total_energy": "meV", "force": "meV/A", "stress": "meV/A^3"}
    lines = [title, f"  {'':14s}{'MAE':>12s}{'RMSE':>12s}"]
    for name, unit in units.items():
        mae, rmse = metrics.get(f"{name}_mae", float("nan")), metrics.get(f"{name}_rmse", float("nan"))
        if not math.isnan(mae):
            lines.append(f"  {name:14s}{mae:12.3f}{rmse:12.3f}  {unit}")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curve(metrics_csv: str, path: str) -> None:
    rows = read_metrics(metrics_csv)
    if not rows:
        return
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].semilogy(epochs, [r["train_loss"] for r in rows])
    axes[0].set(xlabel="epoch", ylabel="training loss")
    for key, label in (("energy_mae", "E MAE (meV/atom)"), ("force_mae", "F MAE (meV/A)"), ("stress_mae", "S MAE (meV/A^3)")):
        values = [r[key] for r in rows]
        if not all(math.isnan(v) for v in values):
            axes[1].semilogy(epochs, values, label=label)
    axes[1].set(xlabel="epoch", ylabel="validation error")
    axes[1].legend()
    axes[2].semilogy(epochs, [r["lr"] for r in rows])
    axes[2].set(xlabel="epoch", ylabel="learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parity_plot(pairs: Dict[str, tuple], path: str, title: Optional[str] = None) -> None:
    """pairs: name -> (reference, predicted, unit) arrays; one panel each."""
    plt = _pyplot()
    pairs = {k: v for k, v in pairs.items() if len(v[0])}
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4))
    axes = np.atleast_1d(axes)
    for ax, (name, (ref, pred, unit)) in zip(axes, pairs.items()):
        ref, pred = np.asarray(ref).ravel(), np.asarray(pred).ravel()
        lo, hi = min(ref.min(), pred.min()), max(ref.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.scatter(ref, pred, s=4, alpha=0.5)
        mae = np.abs(pred - ref).mean()
        ax.set(xlabel=f"reference {name} ({unit})", ylabel=f"predicted ({unit})", title=f"{name}: MAE {mae:.3g} {unit}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
