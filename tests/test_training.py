"""The trainer: logs and plots, the written-back config, schedules, early stopping, loss terms, resuming after
kill -9, fine-tuning, `vivace evaluate`, and DDP on 2 processes against 1."""

import csv
import glob
import math
import os
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
import torch
import yaml

from conftest import R_MAX, TYPE_NAMES, emt_frames
from vivace.checkpoint import load_checkpoint
from vivace.config import DEFAULTS, load_config
from vivace.data import collate, load_structures, structures_from_frames
from vivace.losses import Loss, LossDenominators, predict
from vivace.reporting import COLUMNS, read_metrics
from vivace.training import train

MODEL = dict(r_max=R_MAX, l_max=1, num_layers=1, num_scalar_features=8, num_tensor_features=2,
             two_body_hidden=[8], latent_hidden=[8], readout_hidden=[4])  # fmt: skip
METRIC_COLUMNS = [c for c in COLUMNS if c not in ("time_s",)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    frames = emt_frames(14, seed=50, stress=True)
    ase.io.write(folder / "train.xyz", frames[:10])
    ase.io.write(folder / "val.xyz", frames[10:])
    return folder


def config(tmp_path, data, run="run", **training):
    return {
        "run_dir": str(tmp_path / run),
        "data": {"train": str(data / "train.xyz"), "validation": str(data / "val.xyz"), "cache_dir": str(tmp_path / "cache")},
        "model": dict(MODEL),
        "training": {"max_epochs": 3, "batch_size": 4, "plots": False, "tensorboard": False, **training},
    }


def vivace(*args, cwd, env=None):
    proc = subprocess.run([sys.executable, "-m", "vivace.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def same_rows(a, b, rel):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in METRIC_COLUMNS:
            if not (math.isnan(x[key]) and math.isnan(y[key])):
                assert abs(x[key] - y[key]) <= rel * abs(x[key]), (key, x[key], y[key])


def test_outputs_and_written_back_config(tmp_path, data, capsys):
    run = train(config(tmp_path, data, max_epochs=2, plots=True, tensorboard=True))
    out = capsys.readouterr().out
    assert "best model (epoch" in out and "stress" in out
    rows = read_metrics(os.path.join(run, "metrics.csv"))
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r[k]) for r in rows for k in METRIC_COLUMNS)
    for name in ("best.ckpt", "last.ckpt", "learning_curve.png", "parity_validation.png"):
        assert os.path.getsize(os.path.join(run, name)) > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run, "tensorboard"))
    events.Reload()
    forces = [e.value for e in events.Scalars("validation/force_mae")]
    assert forces == pytest.approx([r["force_mae"] for r in rows], rel=1e-6)

    written = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    for section in ("data", "training"):
        assert set(written[section]) == set(DEFAULTS[section])
    assert written["model"]["type_names"] == TYPE_NAMES and written["model"]["kind"] == "allegro"
    structures = load_structures(str(data / "train.xyz"), TYPE_NAMES, R_MAX)
    edges = sum(s.edge_index.shape[1] for s in structures) / sum(s.num_atoms for s in structures)
    assert written["derived"]["avg_num_neighbors"] == pytest.approx(edges, rel=1e-12)
    assert written["derived"]["num_train"] == 10 and written["derived"]["num_validation"] == 4
    again = load_config(os.path.join(run, "config.yaml"))
    assert again == load_config(config(tmp_path, data, max_epochs=2, plots=True, tensorboard=True)) | {"model": again["model"]}


def test_second_run_reads_the_cache_only(tmp_path, data, monkeypatch):
    """A second run on the same files (type names not given, so found from the data) parses nothing."""
    import vivace.data.dataset as dataset

    train(config(tmp_path, data, run="first", max_epochs=1))
    monkeypatch.setattr(dataset, "read_data", lambda *args: pytest.fail("parsed a data file again"))
    run = train(config(tmp_path, data, run="second", max_epochs=1))
    assert yaml.safe_load(open(os.path.join(run, "config.yaml")))["model"]["type_names"] == TYPE_NAMES


def test_warmup_then_cosine(tmp_path, data):
    """Linear warm-up over 1.5 epochs of optimizer steps, then cosine to the minimum at the last epoch."""
    base, low, epochs = 0.01, 1e-4, 5
    run = train(config(tmp_path, data, max_epochs=epochs, learning_rate=base, min_learning_rate=low,
                       scheduler="cosine", warmup_epochs=1.5, final_stage_start=None))  # fmt: skip
    lrs = [r["lr"] for r in read_metrics(os.path.join(run, "metrics.csv"))]
    steps_per_epoch, warmup = 3, round(1.5 * 3)  # 10 structures in batches of 4
    start = 1 / (warmup + 1)
    assert lrs[0] == pytest.approx(base * (start + (1 - start) * steps_per_epoch / warmup), rel=1e-12)
    cosine_epochs = epochs - warmup // steps_per_epoch
    expected = [low + (base - low) * (1 + math.cos(math.pi * k / cosine_epochs)) / 2 for k in range(1, cosine_epochs + 1)]
    assert lrs[1:] == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] == pytest.approx(low)


def test_early_stopping_and_plateau(tmp_path, data, capsys):
    """With a zero learning rate nothing improves after epoch 1: the plateau schedule has nothing to cut,
    and training stops after `early_stopping_patience` more epochs."""
    run = train(config(tmp_path, data, max_epochs=20, learning_rate=0.0, early_stopping_patience=3, final_stage_start=None))
    assert len(read_metrics(os.path.join(run, "metrics.csv"))) == 4
    assert "no improvement of validation force_rmse for 3 epochs" in capsys.readouterr().out


def test_final_stage_raises_the_energy_weight_and_drops_the_learning_rate(tmp_path, data, capsys):
    """From half the epochs on: energy weight 10000, learning rate 0.002, and best.ckpt is one of those epochs
    even though forces (the monitor) were better before."""
    run = train(config(tmp_path, data, max_epochs=4, learning_rate=0.01, scheduler="none", final_stage_start=0.5,
                       final_energy_weight=10000.0, final_learning_rate=0.002))  # fmt: skip
    stage = "final stage from epoch 3: energy weight 10000, stress weight 10, learning rate 0.002"
    assert stage in capsys.readouterr().out
    rows = read_metrics(os.path.join(run, "metrics.csv"))
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.01, 0.002, 0.002])
    assert load_checkpoint(os.path.join(run, "best.ckpt"))["epoch"] >= 3
    trainer = load_checkpoint(os.path.join(run, "last.ckpt"))["trainer"]
    assert trainer["final_stage"] is True

    # the same two first epochs without the final stage give the same training loss; the third differs by the
    # energy term's weight (the loss is a sum over terms, so a 10000x energy weight shows in the training loss)
    plain = read_metrics(os.path.join(train(config(tmp_path, data, run="plain", max_epochs=3, learning_rate=0.01,
                                                   scheduler="none", final_stage_start=None)), "metrics.csv"))  # fmt: skip
    assert [r["train_loss"] for r in plain[:2]] == pytest.approx([r["train_loss"] for r in rows[:2]], rel=1e-6)  # float32
    assert rows[2]["train_loss"] > 5 * plain[2]["train_loss"]

    with pytest.raises(ValueError, match="final_stage_start"):
        load_config(config(tmp_path, data, final_stage_start=1.5))


def test_final_stage_stress_weight(tmp_path, data, capsys):
    """final_stress_weight replaces the stress weight from the final stage on."""
    common = dict(max_epochs=3, learning_rate=0.01, scheduler="none", final_energy_weight=1.0)
    rows = read_metrics(os.path.join(train(config(tmp_path, data, final_stage_start=0.5, final_stress_weight=1000.0,
                                                  **common)), "metrics.csv"))  # fmt: skip
    assert "energy weight 1, stress weight 1000, learning rate" in capsys.readouterr().out
    plain = read_metrics(os.path.join(train(config(tmp_path, data, run="plain", final_stage_start=None, **common)),
                                      "metrics.csv"))  # fmt: skip
    assert [r["train_loss"] for r in plain[:2]] == pytest.approx([r["train_loss"] for r in rows[:2]], rel=1e-6)
    assert rows[2]["train_loss"] > 5 * plain[2]["train_loss"]


def test_loss_terms_weights_and_huber(data):
    import vivace.models as models

    frames = ase.io.read(data / "train.xyz", ":")
    structures = structures_from_frames(frames[:3], TYPE_NAMES, R_MAX)
    torch.manual_seed(0)
    model = models.EdgeForceModel(models.build_model("allegro", dict(MODEL, avg_num_neighbors=20.0), TYPE_NAMES, "float64"))
    batch = collate(structures)
    pred = predict(model, batch)
    scale = 0.7  # errors are measured in units of the energy scale: the loss is dimensionless
    loss = Loss(1.0, 2.0, 3.0, scale=scale)(pred, batch, LossDenominators.of(structures)).item()
    de = (pred.energy - batch.energy) / batch.num_atoms
    df = pred.forces - batch.forces
    volume_per_atom = torch.tensor([f.get_volume() / len(f) for f in frames[:3]], dtype=torch.float64).view(-1, 1, 1)
    dw = (pred.stress - batch.stress) * volume_per_atom  # the virial per atom
    expected = ((de**2).mean() + 2 * (df**2).mean() + 3 * (dw**2).mean()) / scale**2
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    # the stress the loss sees is the ASE calculator's stress
    from vivace.calculators import VivaceCalculator

    atoms = frames[1].copy()
    atoms.calc = VivaceCalculator((model.model, {"type_names": TYPE_NAMES, "hyperparameters": {"r_max": R_MAX}}))
    assert np.allclose(atoms.get_stress(voigt=False), pred.stress[1].detach().numpy(), rtol=0, atol=1e-12)

    huber = Loss(1.0, 1.0, 0.0, kind="huber", huber_delta=0.05)(pred, batch, LossDenominators.of(structures)).item()
    def h(x):
        return torch.where(x.abs() < 0.05, 0.5 * x**2, 0.05 * (x.abs() - 0.025))
    assert huber == pytest.approx((h(de).mean() + h(df).mean()).item(), rel=1e-12)

    # a structure of weight 0 changes nothing; weight 2 counts twice
    heavy = structures_from_frames(frames[:3], TYPE_NAMES, R_MAX)
    heavy[2].weight = 0.0
    batch0 = collate(heavy)
    loss0 = Loss()(predict(model, batch0), batch0, LossDenominators.of(heavy)).item()
    batch2 = collate(heavy[:2])
    assert loss0 == pytest.approx(Loss()(predict(model, batch2), batch2, LossDenominators.of(heavy[:2])).item(), rel=1e-13)


def test_ema_decay_warms_up():
    """The average after n updates follows a_n = d_n a_(n-1) + (1 - d_n) w_n with d_n = min(decay, n / (9 + n)),
    the first update a copy: the starting weights fade out within tens of steps, not the 1 / (1 - decay) of a
    fixed decay."""
    from torch.optim.swa_utils import AveragedModel

    from vivace.training import warmed_ema

    model = torch.nn.Linear(3, 2)
    ema = AveragedModel(model, multi_avg_fn=warmed_ema(0.999))
    rng = np.random.default_rng(0)
    expected = None
    for n in range(1, 60):
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(rng.normal(size=(2, 3)), dtype=torch.float32) + 1.0)
        ema.update_parameters(model)
        w = model.weight.detach().double()
        d = min(0.999, n / (9.0 + n))
        expected = w if n == 1 else d * expected + (1 - d) * w
        assert torch.allclose(ema.module.weight.double(), expected, atol=1e-6)


def test_resume_after_kill_matches_uninterrupted(tmp_path, data):
    """kill -9 during epoch 3 or later, `vivace train --resume`, and every metric of every epoch equals an
    uninterrupted run's (warm-up, cosine schedule, final stage, EMA, AdamW and shuffling all restored)."""
    settings = dict(max_epochs=8, batch_size=2, optimizer="adamw", weight_decay=0.01, scheduler="cosine", warmup_epochs=1.0,
                    threads=1, final_stage_start=0.125)  # the final stage from epoch 2: resumed inside it
    for name in ("whole", "killed"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config(tmp_path, data, run=name, **settings)))
    vivace("train", "whole.yaml", cwd=tmp_path)

    proc = subprocess.Popen([sys.executable, "-m", "vivace.cli", "train", "killed.yaml"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics = tmp_path / "killed" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(str(tmp_path / "killed" / "last.ckpt"))["epoch"]
    assert 2 <= stopped_at < 8, "the run was not interrupted"
    out = vivace("train", "--resume", "killed", cwd=tmp_path)
    assert f"resuming after epoch {stopped_at}" in out
    whole = read_metrics(str(tmp_path / "whole" / "metrics.csv"))
    same_rows(whole, read_metrics(str(metrics)), rel=0.0)
    a, b = (load_checkpoint(str(tmp_path / n / "last.ckpt"))["state_dict"] for n in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def shortest_by_pair(frames):
    """Brute force: the shortest minimum-image distance between atoms of each pair of types."""
    out = np.full((len(TYPE_NAMES),) * 2, np.inf)
    for atoms in frames:
        d = atoms.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        t = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()])
        for a in range(len(TYPE_NAMES)):
            for b in range(len(TYPE_NAMES)):
                out[a, b] = min(out[a, b], d[np.ix_(t == a, t == b)].min())
    return out


def test_shortest_distances_travel_to_the_calculator(tmp_path, data):
    """The checkpoint carries the training set's shortest distance per pair of types, the artifact carries it
    too, and the ASE calculator warns when a structure comes under 0.9 of it (not on the training data)."""
    import warnings

    from vivace.calculators import ExtrapolationWarning, VivaceCalculator
    from vivace.export import export

    run = train(config(tmp_path, data, max_epochs=1))
    spec = load_checkpoint(os.path.join(run, "best.ckpt"))["model"]
    frames = ase.io.read(data / "train.xyz", ":")
    shortest = spec["hyperparameters"]["shortest_distances"]
    np.testing.assert_allclose(shortest, shortest_by_pair(frames), rtol=1e-12)
    artifact = export(os.path.join(run, "best.ckpt"), str(tmp_path / "model.pth"))
    for model in (os.path.join(run, "best.ckpt"), artifact):
        calc = VivaceCalculator(model)
        if model == artifact:
            table = [float(d) for d in calc.backend.model.metadata["shortest_distances"].split()]
            np.testing.assert_allclose(np.reshape(table, (2, 2)), shortest, rtol=1e-15)
        atoms = frames[0].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("error", ExtrapolationWarning)
            atoms.calc = calc
            atoms.get_potential_energy()
        atoms.set_cell(atoms.cell * 0.8, scale_atoms=True)
        atoms.calc = calc
        with pytest.warns(ExtrapolationWarning, match=r"\(\w\w-\w\w\) are [\d.]+ A apart, 0\.[78]\d of the shortest"):
            atoms.get_potential_energy()


def test_fine_tuning(tmp_path, data):
    """A fine-tuning run starts from the checkpoint's weights: with learning rate 0 its validation errors are
    the checkpoint's own errors on the new data. New data with an element the model lacks is refused."""
    from vivace.evaluation import evaluate_checkpoint

    first = train(config(tmp_path, data, run="first", max_epochs=2))
    new = emt_frames(6, seed=70, stress=True)
    for a in new:
        a.rattle(0.05, seed=1)
        a.calc.reset()
        a.get_potential_energy(), a.get_stress()
    ase.io.write(tmp_path / "new.xyz", new)
    cfg = config(tmp_path, data, run="tuned", max_epochs=1, learning_rate=0.0, init_from=os.path.join(first, "best.ckpt"))
    cfg["data"] = {"train": str(tmp_path / "new.xyz"), "validation": str(tmp_path / "new.xyz"), "cache_dir": None}
    cfg["model"] = {"kind": "allegro"}  # the checkpoint defines the model
    tuned = train(cfg)
    row = read_metrics(os.path.join(tuned, "metrics.csv"))[0]
    reference = evaluate_checkpoint(os.path.join(first, "best.ckpt"), load_structures(str(tmp_path / "new.xyz"), TYPE_NAMES, R_MAX))
    for key in ("energy_mae", "force_rmse", "stress_mae"):
        assert row[key] == pytest.approx(reference[key], rel=1e-10)
    shortest = [load_checkpoint(os.path.join(run, "best.ckpt"))["model"]["hyperparameters"]["shortest_distances"]
                for run in (first, tuned)]
    np.testing.assert_allclose(shortest[1], np.minimum(shortest[0], shortest_by_pair(ase.io.read(tmp_path / "new.xyz", ":"))), rtol=1e-12)

    zr = new[0].copy()
    zr.symbols[0] = "Zr"
    ase.io.write(tmp_path / "zr.xyz", zr)
    cfg["data"]["train"] = cfg["data"]["validation"] = str(tmp_path / "zr.xyz")
    with pytest.raises(ValueError, match=r"element\(s\) \['Zr'\] unknown to the model"):
        train(cfg)


def test_evaluate_command(tmp_path, data):
    """`vivace evaluate` on the checkpoint and on its exported artifact gives the trainer's validation errors."""
    run = train(config(tmp_path, data, max_epochs=2))
    best = load_checkpoint(os.path.join(run, "best.ckpt"))
    vivace("export", os.path.join(run, "best.ckpt"), "-o", "model.pth", cwd=tmp_path)
    for model, out in ((os.path.join(run, "best.ckpt"), "ev_ckpt"), ("model.pth", "ev_pth")):
        text = vivace("evaluate", model, str(data / "val.xyz"), "--out", out, cwd=tmp_path)
        assert "force" in text
        import json

        metrics = json.load(open(tmp_path / out / "metrics.json"))
        assert metrics["structures"] == 4
        for key in ("energy_mae", "force_mae", "force_rmse", "stress_rmse", "total_energy_mae"):
            assert metrics[key] == pytest.approx(best["metrics"][key], rel=1e-9)
        assert os.path.getsize(tmp_path / out / "parity.png") > 1000


def test_ddp_two_processes_equal_one(tmp_path, data):
    """torchrun with 2 gloo processes and the same global batch gives the loss curve of 1 process. 10
    structures in batches of 4 leave a last batch of 2, split 1 + 1; batch 3 leaves one process idle."""
    env = dict(os.environ, OMP_NUM_THREADS="1", VIVACE_DDP_BACKEND="gloo")
    for batch_size in (4, 3):
        for name in ("one", "two"):
            cfg = config(tmp_path, data, run=f"{name}{batch_size}", batch_size=batch_size, max_epochs=3, threads=1,
                         dtype="float64")  # float32 sums in another order would differ by ~1e-7 after the first step
            (tmp_path / f"{name}{batch_size}.yaml").write_text(yaml.safe_dump(cfg))
        vivace("train", f"one{batch_size}.yaml", cwd=tmp_path, env=env)
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             "-m", "vivace.cli", "train", f"two{batch_size}.yaml"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "2 process(es)" in proc.stdout
        one, two = (read_metrics(str(tmp_path / f"{n}{batch_size}" / "metrics.csv")) for n in ("one", "two"))
        same_rows(one, two, rel=1e-10)


def test_float32_training_serves_float64_checkpoints(tmp_path, data):
    """Training computes in float32 by default while checkpoints serve model.dtype (float64 here): best.ckpt's
    model has the float32 weights exactly and its constants (buffers) built in float64, not rounded through
    float32, and the validation errors recorded for it are its own, as `vivace evaluate` finds them."""
    from vivace.checkpoint import model_from_checkpoint
    from vivace.evaluation import evaluate_checkpoint
    from vivace.models import build_model

    run = train(config(tmp_path, data, max_epochs=2))
    payload = load_checkpoint(os.path.join(run, "best.ckpt"))
    model, spec = model_from_checkpoint(payload)
    assert spec["dtype"] == "float64"
    trained = payload["state_dict"]
    for name, parameter in model.named_parameters():
        assert trained[name].dtype == torch.float32 and parameter.dtype == torch.float64
        assert torch.equal(parameter, trained[name].double())
    fresh = dict(build_model(spec["kind"], spec["hyperparameters"], spec["type_names"], "float64").named_buffers())
    rounded = 0
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, fresh[name]), name
        rounded += name in trained and not torch.equal(buffer, trained[name].to(buffer.dtype))
    assert rounded > 0, "no buffer would have been rounded: the check above proves nothing"

    reference = evaluate_checkpoint(os.path.join(run, "best.ckpt"), load_structures(str(data / "val.xyz"), TYPE_NAMES, R_MAX))
    for key in ("energy_mae", "force_rmse", "stress_mae"):
        assert payload["metrics"][key] == pytest.approx(reference[key], rel=1e-10)


def test_gradient_clipping_and_isolated_atom_energies(tmp_path, data):
    """Every optimizer step sees a gradient norm within `gradient_clip`; given isolated-atom energies become
    the per-species shifts instead of the least-squares fit, and a missing element is named."""
    from vivace.training import Trainer

    cfg = config(tmp_path, data, gradient_clip=1e-3)
    cfg["model"]["isolated_atom_energies"] = {"Al": -0.5, "Cu": -0.25}
    trainer = Trainer(load_config(cfg))
    hyper = trainer.spec["hyperparameters"]
    assert hyper["energy_shift"] == [-0.5, -0.25]
    assert hyper["cohesion_form"] == "none" and "cohesion" not in hyper  # the default: the shifts alone
    assert not trainer.model.head.has_cohesion
    norms, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad.norm() for p in trainer.model.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(grads)).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer._train_epoch(math.inf)
    assert len(norms) == 3 and max(norms) <= 1e-3 * (1 + 1e-9)

    cfg["model"]["cohesion_form"] = "sqrt"
    trainer = Trainer(load_config(cfg))
    assert len(trainer.spec["hyperparameters"]["cohesion"]) == 2 and trainer.model.head.has_cohesion

    cfg["model"]["isolated_atom_energies"] = {"Al": -0.5}
    with pytest.raises(ValueError, match=r"no energy for \['Cu'\]"):
        Trainer(load_config(cfg))


def test_non_finite_steps_are_skipped_then_stop(tmp_path, data, monkeypatch, capsys):
    """A non-finite loss never reaches the optimizer, the EMA or a checkpoint; too many in a row stop training."""
    calls = {"n": 0}
    real_loss = Loss.__call__

    def poisoned(bad_calls):
        def call(self, *args):
            calls["n"] += 1
            loss = real_loss(self, *args)
            return loss * float("nan") if bad_calls(calls["n"]) else loss
        return call

    monkeypatch.setattr(Loss, "__call__", poisoned(lambda n: n in (2, 3)))
    run = train(config(tmp_path, data, max_epochs=2))  # 3 steps per epoch
    assert capsys.readouterr().out.count("step skipped") == 2
    last = load_checkpoint(os.path.join(run, "last.ckpt"))
    assert last["trainer"]["step"] == 4 and last["trainer"]["skipped_steps"] == 2
    assert all(s["step"] == 4 for s in last["trainer"]["optimizer"]["state"].values())  # Adam saw 4 steps
    for weights in (last["state_dict"], last["trainer"]["model"], last["trainer"]["ema"]):
        assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())

    calls["n"] = 0
    monkeypatch.setattr(Loss, "__call__", poisoned(lambda n: n > 3))
    with pytest.raises(RuntimeError, match="training stopped: 5 consecutive steps gave a non-finite loss"):
        train(config(tmp_path, data, run="stops", max_epochs=4, max_skipped_steps=5))
    last = load_checkpoint(os.path.join(tmp_path, "stops", "last.ckpt"))
    # epoch 2 skipped all its 3 steps (its weights are epoch 1's); 2 more in epoch 3 made 5 in a row
    assert last["epoch"] == 2 and last["trainer"]["step"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())
