"""The trainer: data and statistics, loss, optimiser and schedules, EMA, validation, logs, checkpoints,
resuming, fine-tuning and data-parallel training (torchrun + DDP)."""

import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from . import distributed, reporting, statistics
from .checkpoint import load_checkpoint, save_checkpoint
from .config import MODEL_META_KEYS, dump_config, load_config
from .data import Structure, collate, load_graphs
from .losses import ErrorSums, Loss, LossDenominators, evaluate_structures, predict
from .models import EdgeForceModel, build_model, load_weights
from .models.common import cutoff_matrix

LAST, BEST = "last.ckpt", "best.ckpt"


def _split(count: int, fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(count)
    n_val = max(1, int(round(fraction * count))) if count > 1 and fraction > 0 else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("config asks for device cuda, but this torch sees no CUDA device")
        return distributed.gpu()
    return torch.device("cpu")


def warmed_ema(decay: float):
    """The averaging step of an exponential moving average whose decay grows as min(decay, (1 + n) / (10 + n))
    with the n updates so far: early weights, far from converged, leave the average within tens of steps
    instead of the 1 / (1 - decay) a fixed decay needs."""

    @torch.no_grad()
    def average(averaged: List[torch.Tensor], current: List[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return average


def model_spec(config: Dict[str, Any], train_set: Sequence[Structure], type_names: List[str]) -> Dict[str, Any]:
    """Kind, dtype, types and hyperparameters, with the normalisation taken from the training set."""
    mcfg = config["model"]
    hyper = {k: v for k, v in mcfg.items() if k not in MODEL_META_KEYS}
    hyper["units"] = config["units"]
    r_cut = cutoff_matrix(type_names, float(mcfg["r_max"]), hyper.get("edge_type_cutoffs"))
    hyper["avg_num_neighbors"] = statistics.average_num_neighbors(
        train_set, len(type_names), mcfg["neighbor_normalization"] == "per_type", None if r_cut is None else r_cut.numpy()
    )
    isolated = mcfg["isolated_atom_energies"]
    if isolated:
        missing = [t for t in type_names if t not in isolated]
        if missing:
            raise ValueError(f"model.isolated_atom_energies has no energy for {missing}")
        hyper["energy_shift"] = [float(isolated[t]) for t in type_names]
        if hyper.get("cohesion_form", "none") != "none":
            cutoffs = r_cut.numpy() if r_cut is not None else np.full((len(type_names),) * 2, float(mcfg["r_max"]))
            hyper["cohesion"], hyper["mean_coordination"] = statistics.cohesion_baseline(
                train_set, len(type_names), hyper["energy_shift"], cutoffs, float(hyper.get("polynomial_p", 6)),
                hyper["cohesion_form"],
            )
    else:
        hyper["energy_shift"] = statistics.energy_shifts(train_set, len(type_names))
    hyper["energy_scale"] = [statistics.force_rms(train_set)] * len(type_names)
    hyper["shortest_distances"] = shortest_distances(train_set, type_names, hyper)
    return {"kind": mcfg["kind"], "hyperparameters": hyper, "type_names": list(type_names), "dtype": mcfg["dtype"],
            "units": config["units"]}


def shortest_distances(train_set: Sequence[Structure], type_names: List[str], hyper: Dict[str, Any]) -> List[List[float]]:
    """The training data's shortest distance for each pair of types (statistics.shortest_distances)."""
    r_max = float(hyper["r_max"])
    r_cut = cutoff_matrix(type_names, r_max, hyper.get("edge_type_cutoffs"))
    cutoffs = r_cut.numpy() if r_cut is not None else np.full((len(type_names),) * 2, r_max)
    return statistics.shortest_distances(train_set, len(type_names), cutoffs)


class Trainer:
    def __init__(self, config: Dict[str, Any], resume: bool = False):
        self.config = config
        tcfg = self.tcfg = config["training"]
        self.run_dir = config["run_dir"]
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.device = _resolve_device(config["device"])
        if tcfg["threads"]:
            torch.set_num_threads(int(tcfg["threads"]))
        torch.manual_seed(config["seed"])

        last = load_checkpoint(os.path.join(self.run_dir, LAST)) if resume else None
        init = load_checkpoint(tcfg["init_from"]) if (tcfg["init_from"] and not resume) else None
        self._load_data(last or init)
        if last is not None:
            self.spec = last["model"]
        elif init is not None:  # fine-tuning: the model has now seen both data sets' shortest distances
            hyper = dict(init["model"]["hyperparameters"])
            ours = shortest_distances(self.train_set, self.type_names, hyper)
            hyper["shortest_distances"] = np.minimum(ours, hyper.get("shortest_distances", ours)).tolist()
            self.spec = {**init["model"], "hyperparameters": hyper}
        else:
            self.spec = model_spec(config, self.train_set, self.type_names)
        if self.spec["units"] != config["units"]:
            raise ValueError(
                f"the checkpoint's model is in units '{self.spec['units']}' but the config says units '{config['units']}'"
            )
        # trained in tcfg["dtype"]; the checkpoints' weights serve the spec's dtype (model_from_checkpoint)
        self.model = build_model(self.spec["kind"], self.spec["hyperparameters"], self.type_names, tcfg["dtype"])
        if init is not None:
            load_weights(self.model, init["state_dict"])
        self.model.to(self.device)

        self.ema = None
        if tcfg["ema_decay"]:
            self.ema = AveragedModel(self.model, multi_avg_fn=warmed_ema(float(tcfg["ema_decay"])))
        self.train_module = EdgeForceModel(self.model, create_graph=True)
        if self.world > 1:
            on_gpu = self.device.type == "cuda"
            self.train_module = DistributedDataParallel(
                self.train_module, device_ids=[self.device] if on_gpu else None, output_device=self.device if on_gpu else None
            )
        self.loss = Loss(
            tcfg["energy_weight"], tcfg["force_weight"], tcfg["stress_weight"], tcfg["loss"], tcfg["huber_delta"],
            scale=float(np.mean(self.spec["hyperparameters"]["energy_scale"])),
        )
        self._make_optimizer()
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.skipped_steps, self.skipped_in_a_row = 0, 0
        self.best, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.final_stage = False
        self.rng = np.random.default_rng(config["seed"])
        if last is not None:
            self._restore(last["trainer"])
        self.eval_model = self._make_eval_model()

    def _load_data(self, checkpoint: Optional[Dict[str, Any]]) -> None:
        cfg, dcfg = self.config, self.config["data"]
        cache = os.path.expanduser(dcfg["cache_dir"]) if dcfg["cache_dir"] else None
        hyper = checkpoint["model"]["hyperparameters"] if checkpoint is not None else cfg["model"]
        r_max, cutoffs = float(hyper["r_max"]), hyper.get("edge_type_cutoffs")
        graphs = {
            key: load_graphs(dcfg[key], r_max, cache, cfg["units"], dcfg["min_distance"])
            for key in ("train", "validation", "test")
            if dcfg[key]
        }
        if checkpoint is not None:
            self.type_names = list(checkpoint["model"]["type_names"])
        else:
            present = {e for g in graphs.values() for e in g.elements()}
            self.type_names = cfg["model"]["type_names"] or sorted(present, key=lambda e: atomic_numbers[e])
        cfg["model"]["type_names"] = list(self.type_names)
        r_cut = cutoff_matrix(self.type_names, r_max, cutoffs)
        r_cut = None if r_cut is None else r_cut.numpy()

        def typed(key):
            return graphs[key].structures(self.type_names, r_cut) if key in graphs else []

        everything = typed("train")
        if dcfg["validation"]:
            self.train_set, self.val_set = everything, typed("validation")
        else:
            train_idx, val_idx = _split(len(everything), dcfg["val_fraction"], cfg["seed"])
            self.train_set, self.val_set = [everything[k] for k in train_idx], [everything[k] for k in val_idx]
        self.test_set = typed("test")
        for name, subset in (("training", self.train_set), ("validation", self.val_set), ("test", self.test_set)):
            if any(s.energy is None or s.forces is None for s in subset):
                raise ValueError(f"every {name} structure needs an energy and forces")
        if not self.train_set:
            raise ValueError("no training structures")

    def _make_optimizer(self) -> None:
        t = self.tcfg
        cls = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
        self.optimizer = cls(self.model.parameters(), lr=t["learning_rate"], weight_decay=t["weight_decay"])
        self.steps_per_epoch = math.ceil(len(self.train_set) / t["batch_size"])
        self.warmup_steps = int(round(t["warmup_epochs"] * self.steps_per_epoch))
        self.warmup = None
        if self.warmup_steps > 0:
            self.warmup = torch.optim.lr_scheduler.LinearLR(
                self.optimizer, start_factor=1.0 / (self.warmup_steps + 1), total_iters=self.warmup_steps
            )
        if t["scheduler"] == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=t["lr_factor"], patience=t["lr_patience"], min_lr=t["min_learning_rate"]
            )
        elif t["scheduler"] == "cosine":
            # stepped once per epoch that ends after the warm-up
            cosine_epochs = max(1, t["max_epochs"] - self.warmup_steps // self.steps_per_epoch)
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=cosine_epochs, eta_min=t["min_learning_rate"]
            )
        else:
            self.scheduler = None

    def _weights(self) -> torch.nn.Module:
        """The weights that are validated and checkpointed: the average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _make_eval_model(self) -> torch.nn.Module:
        """Validation judges the model the checkpoints serve: the weights in model.dtype (a copy, refreshed before
        each pass, when training runs in another dtype)."""
        self.served = self._weights()
        if self.tcfg["dtype"] != self.spec["dtype"]:
            spec = self.spec
            self.served = build_model(spec["kind"], spec["hyperparameters"], self.type_names, spec["dtype"]).to(self.device)
            self.served.eval()
        return EdgeForceModel(torch.compile(self.served) if self.tcfg["compile"] else self.served)

    # -- state -----------------------------------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "warmup": None if self.warmup is None else self.warmup.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "final_stage": self.final_stage,
            "skipped_steps": self.skipped_steps,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def _restore(self, state: Dict[str, Any]) -> None:
        load_weights(self.model, state["model"])
        if self.ema is not None and state["ema"] is not None:
            load_weights(self.ema, state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.warmup is not None and state["warmup"] is not None:
            self.warmup.load_state_dict(state["warmup"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for key in ("epoch", "step", "elapsed", "best", "best_epoch", "bad_epochs"):
            setattr(self, key, state[key])
        self.skipped_steps = state.get("skipped_steps", 0)
        if state.get("final_stage"):
            self._enter_final_stage(reset_learning_rate=False)
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])

    def _save(self, metrics: Dict[str, float], best: bool) -> None:
        if self.rank != 0:
            return
        weights = self._weights().state_dict()
        broken = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:  # unreachable while non-finite steps are skipped; a checkpoint must never carry them
            raise RuntimeError(f"refusing to write a checkpoint with non-finite weights ({', '.join(broken[:3])})")
        payload = {"model": self.spec, "state_dict": weights, "epoch": self.epoch, "metrics": metrics, "config": self.config}
        save_checkpoint(os.path.join(self.run_dir, LAST), {**payload, "trainer": self._state()})
        if best:
            save_checkpoint(os.path.join(self.run_dir, BEST), payload)

    def _progress(self, started: float, budget: float) -> float:
        """The fraction of the budget used: of max_epochs or of max_minutes, whichever is further along."""
        used = self.epoch / self.tcfg["max_epochs"]
        if math.isfinite(budget):
            used = max(used, (time.monotonic() - started) / budget)
        return used

    def _enter_final_stage(self, reset_learning_rate: bool = True) -> None:
        """The energy and stress weights rise and the learning rate drops (as in MACE's second stage): forces
        are learned first, then the energies of environments that forces alone leave undetermined (surfaces,
        vacancies: a few meV/atom of systematic offset otherwise) and the equation of state. best.ckpt is chosen
        among this stage's epochs, by the validation loss with these weights."""
        t = self.tcfg
        self.final_stage = True
        energy, forces, stress = self.loss.weights
        if t["final_stress_weight"] is not None:
            stress = float(t["final_stress_weight"])
        self.loss.weights = (float(t["final_energy_weight"]), forces, stress)
        if reset_learning_rate:
            for group in self.optimizer.param_groups:
                group["lr"] = float(t["final_learning_rate"])
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.best, self.scheduler.num_bad_epochs = self.scheduler.mode_worse, 0
            self.best, self.bad_epochs = math.inf, 0

    # -- one epoch -------------------------------------------------------------------------------------
    def _train_epoch(self, deadline: float) -> float:
        from tqdm import tqdm

        self.model.train()
        B = self.tcfg["batch_size"]
        order = self.rng.permutation(len(self.train_set))
        loss_sum, steps = torch.zeros((), dtype=torch.float64), 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}", leave=False, disable=None if self.rank == 0 else True)
        for start in range(0, len(order), B):
            global_batch = [self.train_set[k] for k in order[start : start + B]]
            mine = global_batch[self.rank :: self.world]
            scale = float(self.world)  # DDP averages gradients over processes; the loss is a global sum
            if not mine:  # fewer structures than processes: run one with zero weight to keep DDP in step
                mine, scale = global_batch[:1], 0.0
            batch = collate(mine).to(self.device)
            loss = self.loss(predict(self.train_module, batch), batch, LossDenominators.of(global_batch))
            self.optimizer.zero_grad(set_to_none=True)
            (scale * loss).backward()
            clip = self.tcfg["gradient_clip"]
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip) if clip else math.inf)
            if distributed.any_true(not (bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm)))):
                self._skip_step(float(loss.detach()), float(grad_norm))
            else:
                self.skipped_in_a_row = 0
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step += 1
                if self.warmup is not None and self.step <= self.warmup_steps:
                    self.warmup.step()
                loss_sum += (scale / self.world) * loss.detach().cpu()
                steps += 1
            bar.update()
            if distributed.any_true(time.monotonic() > deadline):
                break
        bar.close()
        return float(distributed.sum_tensor(loss_sum)) / steps if steps else math.nan

    def _skip_step(self, loss: float, grad_norm: float) -> None:
        """A step whose loss or gradient is not finite never reaches the optimizer, the EMA or a checkpoint."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        limit = self.tcfg["max_skipped_steps"]
        if self.rank == 0:
            print(
                f"vivace train: epoch {self.epoch + 1}, step {self.step + 1}: non-finite loss ({loss}) or gradient norm "
                f"({grad_norm}); step skipped ({self.skipped_in_a_row} in a row, {self.skipped_steps} in all)",
                flush=True,
            )
        if self.skipped_in_a_row >= limit:
            raise RuntimeError(
                f"training stopped: {self.skipped_in_a_row} consecutive steps gave a non-finite loss or gradient "
                f"(training.max_skipped_steps = {limit}); the weights and last.ckpt are from before them. "
                "Lower training.learning_rate, set training.gradient_clip, or check the data for outliers"
            )

    def _validate(self) -> Dict[str, float]:
        subset = self.val_set if self.val_set else self.train_set
        if self.served is not self._weights():
            load_weights(self.served, self._weights().state_dict())
        sums = evaluate_structures(self.eval_model, subset[self.rank :: self.world], device=self.device, units=self.spec["units"])
        sums.sums = distributed.sum_tensor(sums.sums)
        return sums.metrics()

    def _monitored(self, metrics: Dict[str, float], train_loss: float) -> float:
        if self.final_stage:
            return self._validation_objective(metrics)
        key = self.tcfg["monitor"]
        value = train_loss if key == "loss" else metrics[key]
        return value if not math.isnan(value) else metrics["force_rmse"]

    def _validation_objective(self, metrics: Dict[str, float]) -> float:
        """The loss's weighted sum on the validation RMSEs (up to the common 1/s^2): what the final stage
        minimises, so that its best epoch is not judged by forces alone."""
        w_e, w_f, w_s = self.loss.weights
        total = w_e * metrics["energy_rmse"] ** 2 + w_f * metrics["force_rmse"] ** 2
        if w_s > 0 and not math.isnan(metrics["stress_rmse"]):
            subset = self.val_set if self.val_set else self.train_set
            volume = np.mean([s.volume / s.num_atoms for s in subset if s.stress is not None and s.volume > 0])
            total += w_s * (metrics["stress_rmse"] * float(volume)) ** 2
        return total

    # -- the loop --------------------------------------------------------------------------------------
    def fit(self) -> str:
        t, cfg = self.tcfg, self.config
        resume_epoch = self.epoch
        if self.rank == 0:
            os.makedirs(self.run_dir, exist_ok=True)
            dump_config({**cfg, "derived": self._derived()}, os.path.join(self.run_dir, "config.yaml"))
            log = reporting.MetricsLog(self.run_dir, t["tensorboard"], resume_epoch)
            what = f"resuming after epoch {resume_epoch}" if resume_epoch else "starting"
            if t["init_from"] and not resume_epoch:
                what += f" from {t['init_from']} (its model, types and normalisation; the model section is not used)"
            print(
                f"vivace train: {what}; {len(self.train_set)} training / {len(self.val_set)} validation structures, "
                f"types {self.type_names}, {sum(p.numel() for p in self.model.parameters())} parameters, "
                f"{self.world} process(es) on {self.device}",
                flush=True,
            )
        budget = 60 * t["max_minutes"] if t["max_minutes"] else math.inf
        started = time.monotonic() - self.elapsed
        deadline = started + budget
        stop_reason = "max_epochs reached"
        while self.epoch < t["max_epochs"]:
            start_final = t["final_stage_start"] is not None and self._progress(started, budget) >= t["final_stage_start"]
            if not self.final_stage and distributed.any_true(start_final):
                self._enter_final_stage()
                if self.rank == 0:
                    print(
                        f"vivace train: final stage from epoch {self.epoch + 1}: energy weight "
                        f"{self.loss.weights[0]:g}, stress weight {self.loss.weights[2]:g}, learning rate "
                        f"{t['final_learning_rate']:g}",
                        flush=True,
                    )
            train_loss = self._train_epoch(deadline)
            self.epoch += 1
            metrics = self._validate()
            monitored = self._monitored(metrics, train_loss)
            if self.step > self.warmup_steps:
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(monitored)
                elif self.scheduler is not None:
                    self.scheduler.step()
            improved = monitored < self.best
            if improved:
                self.best, self.best_epoch, self.bad_epochs = monitored, self.epoch, 0
            else:
                self.bad_epochs += 1
            self.elapsed = time.monotonic() - started
            row = {"epoch": self.epoch, "time_s": self.elapsed, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss, **metrics}
            self._save(metrics, improved)
            if self.rank == 0:
                log.write(row)
                print(reporting.console_line(row), flush=True)
            if t["early_stopping_patience"] and self.bad_epochs >= t["early_stopping_patience"]:
                stop_reason = f"no improvement of validation {t['monitor']} for {self.bad_epochs} epochs"
                break
            if distributed.any_true(time.monotonic() > deadline):
                stop_reason = f"time budget of {t['max_minutes']} min reached"
                break
        if self.rank == 0:
            log.close()
            print(f"vivace train: stopped after epoch {self.epoch}: {stop_reason}; best epoch {self.best_epoch}", flush=True)
            self._finish()
        return self.run_dir

    def _derived(self) -> Dict[str, Any]:
        h = self.spec["hyperparameters"]
        return {
            "type_names": list(self.type_names),
            "avg_num_neighbors": h["avg_num_neighbors"],
            "energy_shift": list(h["energy_shift"]),
            "energy_scale": list(h["energy_scale"]),
            "num_train": len(self.train_set),
            "num_validation": len(self.val_set),
            "num_test": len(self.test_set),
            "steps_per_epoch": self.steps_per_epoch,
            "processes": self.world,
            "device": str(self.device),
            "torch": str(torch.__version__),
        }

    def _finish(self) -> None:
        """Plots, and the test set's metrics with the best model."""
        from .evaluation import evaluate_checkpoint

        best = os.path.join(self.run_dir, BEST)
        if self.tcfg["plots"]:
            reporting.learning_curve(os.path.join(self.run_dir, "metrics.csv"), os.path.join(self.run_dir, "learning_curve.png"))
        if not os.path.isfile(best):
            return
        for name, subset in (("validation", self.val_set), ("test", self.test_set)):
            if subset:
                plot = os.path.join(self.run_dir, f"parity_{name}.png") if self.tcfg["plots"] else None
                metrics = evaluate_checkpoint(best, subset, plot=plot, title=f"best model, {name} set")
                print(reporting.metrics_table(metrics, f"vivace train: best model (epoch {self.best_epoch}) on the {name} set"), flush=True)


def train(config_source, resume: Optional[str] = None) -> str:
    """Trains as the config says (or continues RUN_DIR with resume=RUN_DIR); returns the run directory."""
    distributed.init()
    try:
        if resume:
            path = os.path.join(resume, "config.yaml")
            if not os.path.isfile(os.path.join(resume, LAST)):
                raise FileNotFoundError(f"cannot resume: '{resume}' has no {LAST}")
            config = load_config(path)
            config["run_dir"] = resume
        else:
            config = load_config(config_source)
        return Trainer(config, resume=bool(resume)).fit()
    finally:
        distributed.finish()
