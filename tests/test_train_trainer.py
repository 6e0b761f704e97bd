"""The trainer on the real CorrDiff pipeline and synthetic data: learning, resume, budgets, export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xkmcast.train.config import TrainingConfig, load_config
from xkmcast.train.ema import EMA
from xkmcast.train.schedule import learning_rate
from xkmcast.train.trainer import train

STORE_VARS = dict(input_vars=["t2m", "u10m", "v10m", "msl"], output_vars=["t2m", "u10m"], invariants=["orog", "lsm"])


def prepared_store(tmp_path_factory) -> Path:
    """A 16 x 16 synthetic training store (coarse x4), written once per test session."""
    path = tmp_path_factory.getbasetemp() / "xk_train_store.zarr"
    if not path.exists():
        from xkmcast.data.prepare import prepare
        from xkmcast.data.synthetic import synthetic_pair

        coarse, fine = synthetic_pair(nx=16, ny=16, factor=4, times=20, seed=1)
        prepare(fine, coarse, path, regrid_method="nearest", **STORE_VARS)
    return path


#: the regression from interpolation alone: on the synthetic store the training-mean fine detail
#: (model.mean_detail, xkmcast.train.mean_detail) already brings the validation loss near its floor,
#: so tests of whether a few steps learn start without it
FROM_INTERPOLATION = "model.mean_detail=false"


def tiny_config(store: Path, outdir: Path, *extra: str):
    """corrdiff-tiny-regression on the store, sized for seconds on one CPU core."""
    return load_config("corrdiff-tiny-regression", [
        f"data.source={store}", f"data.input_vars={STORE_VARS['input_vars']}",
        f"data.output_vars={STORE_VARS['output_vars']}", f"data.invariants={STORE_VARS['invariants']}",
        "data.valid_fraction=0.2", f"training.outdir={outdir}", "training.batch_size=4", "training.duration=30",
        "training.validate_every=10", "training.valid_batches=1", "training.checkpoint_every=10",
        "training.log_every=1", "training.tensorboard=false", "training.device=cpu", *extra,
    ])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.set_num_threads(1)
    return prepared_store(tmp_path_factory)


def _state(run: Path) -> dict:
    from xkmcast.train.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run / "checkpoints"))


# ------------------------------------------------------------------------------------ pieces
def test_learning_rate_schedules_match_their_formulas():
    t = TrainingConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr=0.1)
    assert learning_rate(0, t, 104) == pytest.approx(0.25)  # (0+1)/4 of the way up
    assert learning_rate(4, t, 104) == pytest.approx(1.0)  # cosine starts at the top
    assert learning_rate(54, t, 104) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: the mean
    assert learning_rate(104, t, 104) == pytest.approx(0.1)
    lin = TrainingConfig(lr=2.0, schedule="linear")
    assert learning_rate(25, lin, 100) == pytest.approx(2.0 * 0.75)


def test_ema_follows_the_closed_form():
    """With weights held at w1 after starting at w0, w_ema after n updates = w1 + beta^n (w0 - w1)."""
    net = torch.nn.Linear(3, 2)
    w0 = [p.detach().clone() for p in net.parameters()]
    cfg = TrainingConfig(ema={"decay": 0.9}).ema
    ema = EMA(net, cfg, batch_size=8)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    for _ in range(5):
        ema.update(samples_seen=8)
    for s, a, p in zip(ema.shadow, w0, net.parameters()):
        torch.testing.assert_close(s, p + 0.9**5 * (a - p))
    half = EMA(net, TrainingConfig(ema={"halflife_samples": 16, "rampup_ratio": None}).ema, batch_size=8)
    assert half.beta(1000) == pytest.approx(0.5 ** 0.5)  # two steps of 8 samples halve the weight


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_tiny_corrdiff_regression_then_diffusion_learn_and_export(store, tmp_path):
    import xkmcast

    reg = train(tiny_config(store, tmp_path, "training.duration=20", "training.image_every=20", FROM_INTERPOLATION),
                quiet=True)
    losses = [v for _, v in reg.valid_losses]
    assert len(losses) == 2 and losses[-1] < 0.8 * losses[0], losses
    assert reg.stop_reason == "duration" and reg.step == 20 and reg.samples == 80
    assert (reg.run_dir / "config.yaml").exists() and list((reg.run_dir / "images").glob("*.png"))
    # the bundle holds the EMA weights of the last checkpoint and opens with load_model
    model = xkmcast.load_model(reg.bundle)
    ema = _state(reg.run_dir)["ema"]
    trained = [p for p in model.stages["regression"].parameters()]
    assert len(trained) == len(ema) and all(torch.equal(a, b) for a, b in zip(trained, ema))
    assert model.grid_lat.shape == (16, 16) and model.invariant.shape == (2, 16, 16)

    diff = train(tiny_config(store, tmp_path, "model.stage=diffusion", f"model.regression_bundle={reg.bundle}",
                             "training.experiment=diff", "training.lr=3e-3", "training.duration=20",
                             "training.validate_every=10", "training.valid_batches=3"), quiet=True)
    dl = [v for _, v in diff.valid_losses]
    assert dl[-1] < dl[0], dl
    both = xkmcast.load_model(diff.bundle)
    assert set(both.stages) == {"regression", "diffusion"}
    # members centred on the regression mean, their spread calibrated on the validation times at export
    assert both.spec.extra["centre_members"] is True
    assert len(both.spec.extra["sample_scale"]) == 2 and all(v > 0 for v in both.spec.extra["sample_scale"])
    for a, b in zip(both.stages["regression"].state_dict().values(), model.stages["regression"].state_dict().values()):
        assert torch.equal(a, b)  # the regression stayed frozen
    logged = [json.loads(line) for line in (diff.run_dir / "log.jsonl").read_text().splitlines()]
    assert any(k.startswith("loss_sigma/") for row in logged for k in row)


@pytest.mark.slow
def test_n_steps_equal_half_resume_half_bitwise(store, tmp_path):
    one = train(tiny_config(store, tmp_path, "training.experiment=one", "training.duration=12",
                            "training.checkpoint_every=3", "training.validate_every=4"), quiet=True)
    first = train(tiny_config(store, tmp_path, "training.experiment=two", "training.duration=12",
                              "training.checkpoint_every=3", "training.validate_every=4"), quiet=True, stop_after=6)
    assert first.step == 6 and first.bundle is None
    second = train(tiny_config(store, tmp_path, "training.experiment=two", "training.duration=12",
                               "training.checkpoint_every=3", "training.validate_every=4"), quiet=True)
    assert second.step == 12
    a, b = _state(one.run_dir), _state(second.run_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))
    assert a["valid_losses"] == b["valid_losses"]


# ----------------------------------------------------------------------------------- budgets
def test_flops_budget_stops_after_the_counted_steps(store, tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    import xkmcast.models as models
    from xkmcast.train.setup import build_run

    cfg = tiny_config(store, tmp_path, "training.validate_every=1000", "training.checkpoint_every=1000")
    pipeline, data, _ = build_run(cfg)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    with FlopCounterMode(display=False) as fc:  # an independent count: forward + backward of one batch
        loss, _ = pipeline.loss("regression", batch)
        loss.mean().backward()
    per_step = fc.get_total_flops()
    assert isinstance(pipeline, models.Pipeline)
    result = train(tiny_config(store, tmp_path, f"training.flops_budget={2.5 * per_step}",
                               "training.validate_every=1000", "training.checkpoint_every=1000"), quiet=True)
    assert result.flops_per_step == per_step
    assert result.stop_reason == "flops_budget" and result.step == 3
    assert result.bundle is not None and (result.bundle / "weights.safetensors").exists()


def test_time_budget_and_early_stopping_stop_cleanly(store, tmp_path):
    timed = train(tiny_config(store, tmp_path, "training.experiment=t", "training.time_budget=0.001"), quiet=True)
    assert timed.stop_reason == "time_budget" and timed.step == 1 and timed.bundle is not None
    # lr ~ 0: the validation loss cannot improve, so patience 1 stops at the second validation
    early = train(tiny_config(store, tmp_path, "training.experiment=e", "training.lr=1e-30", "training.patience=1",
                              "training.validate_every=2", "training.tensorboard=true"), quiet=True)
    assert early.stop_reason == "early_stopping" and early.step == 4
    assert early.valid_losses[0][1] == pytest.approx(early.valid_losses[1][1], rel=1e-6)
    assert math.isfinite(early.train_loss) and np.isfinite(early.parameters)
    # TensorBoard holds the same scalars as log.jsonl (read back with TensorBoard's own reader)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(early.run_dir / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "samples_per_s", "valid_loss"} <= set(events.Tags()["scalars"])
    logged = [json.loads(line) for line in (early.run_dir / "log.jsonl").read_text().splitlines()]
    tb_loss = {e.step: e.value for e in events.Scalars("loss")}
    assert all(tb_loss[row["step"]] == pytest.approx(row["loss"]) for row in logged if "loss" in row)


@pytest.mark.slow
def test_scaling_runner_tabulates_every_run(store, tmp_path):
    import csv

    from xkmcast.train.scaling import run_scaling

    overrides = [f"data.source={store}", f"data.input_vars={STORE_VARS['input_vars']}",
                 f"data.output_vars={STORE_VARS['output_vars']}", f"data.invariants={STORE_VARS['invariants']}",
                 "data.valid_fraction=0.2", "training.batch_size=4", "training.valid_batches=1",
                 "training.device=cpu"]
    rows = run_scaling("corrdiff-tiny-regression", overrides, factors=(0.5, 1.0), types=("width",), steps=2,
                       outdir=str(tmp_path))
    assert [(r["type"], r["factor"], r["steps"]) for r in rows] == [("width", 0.5, 2), ("width", 1.0, 2)]
    small, full = rows
    # half the channels: about a quarter of the convolution weights and FLOPs
    assert 0.2 < small["parameters"] / full["parameters"] < 0.35
    assert 0.2 < small["flops_per_step"] / full["flops_per_step"] < 0.35
    assert all(math.isfinite(r["final_loss"]) and math.isfinite(r["valid_loss"]) for r in rows)
    with open(tmp_path / "corrdiff-tiny-regression-scaling" / "scaling.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and float(table[1]["parameters"]) == full["parameters"]


def test_user_dataset_class_trains_a_stormcast_model(tmp_path):
    """data.dataset_class with the StormCast sample interface: channels and shape come from the class."""
    import xkmcast

    cfg = load_config("stormcast-tiny-regression", [
        "data.source=null", "data.dataset_class=_custom_dataset:ToyStormCastDataset", "data.params={}", "data.input_vars=[]",
        "data.output_vars=[]", "data.background_vars=[]", "data.invariants=[]",
        "model.regression_conditions=[state,background]", "training.duration=4", "training.validate_every=2",
        f"training.outdir={tmp_path}", "training.tensorboard=false"])
    result = train(cfg, quiet=True)
    model = xkmcast.load_model(result.bundle)
    assert model.spec.output_vars == ["t2m", "u10m", "v10m"] and model.spec.background_vars == ["msl"]
    out = model.step(torch.zeros(1, 3, 24, 24), torch.zeros(1, 1, 24, 24), seeds=[0])
    assert out.shape == (1, 3, 24, 24) and torch.isfinite(out).all()


# ------------------------------------------------------------------- accumulation, bf16
def _checkpoint(run: Path, step: int, part: str = "model") -> dict:
    from xkmcast.train.checkpoint import checkpoint_path, load_checkpoint

    return load_checkpoint(checkpoint_path(run / "checkpoints", step))[part]


@pytest.mark.slow
def test_gradient_accumulation_equals_the_large_batch_step(store, tmp_path):
    """4 micro-batches of 1 sample == 1 batch of 4: the same weights after each optimiser step."""
    common = ("training.duration=2", "training.checkpoint_every=1", "training.warmup_steps=0",
              "training.validate_every=100", "model.network.dropout=0.0")  # dropout would draw other masks
    big = train(tiny_config(store, tmp_path, "training.experiment=big", *common), quiet=True)
    acc = train(tiny_config(store, tmp_path, "training.experiment=acc", "training.batch_size_per_rank=1", *common),
                quiet=True)
    assert big.samples == acc.samples == 8
    a1, a2 = _checkpoint(big.run_dir, 1), _checkpoint(big.run_dir, 2)
    b2 = _checkpoint(acc.run_dir, 2)
    moved = max(float((a2[k] - a1[k]).abs().max()) for k in a2 if a2[k].is_floating_point())
    differ = max(float((a2[k] - b2[k]).abs().max()) for k in a2 if a2[k].is_floating_point())
    assert moved > 1e-4, moved  # the step changed the weights ...
    assert differ < 1e-3 * moved, (differ, moved)  # ... identically with and without accumulation
    # Adam is blind to the scale of the gradient: compare the gradient itself, exp_avg = (1 - beta1) g
    ga = [s["exp_avg"] for s in _checkpoint(big.run_dir, 1, "optimizer")["state"].values()]
    gb = [s["exp_avg"] for s in _checkpoint(acc.run_dir, 1, "optimizer")["state"].values()]
    assert len(ga) == len(gb) > 0
    scale = max(float(g.abs().max()) for g in ga)
    assert scale > 0 and max(float((x - y).abs().max()) for x, y in zip(ga, gb)) < 1e-4 * scale


@pytest.mark.slow
def test_bf16_training_learns_and_keeps_fp32_weights(store, tmp_path):
    run = train(tiny_config(store, tmp_path, "training.experiment=bf16", "training.precision=amp-bf16", FROM_INTERPOLATION,
                            "training.duration=20"), quiet=True)
    losses = [v for _, v in run.valid_losses]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.8 * losses[0], losses
    logged = [json.loads(line) for line in (run.run_dir / "log.jsonl").read_text().splitlines()]
    train_losses = [row["loss"] for row in logged if "loss" in row]
    assert len(train_losses) >= 10 and all(math.isfinite(v) for v in train_losses)
    assert np.mean(train_losses[-5:]) < np.mean(train_losses[:5]), train_losses
    weights = _checkpoint(run.run_dir, 20)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_training_statistics_come_from_the_training_times_only(store, tmp_path):
    """With data.train_times, the normalisation of the run (and of its bundle) is that of the
    training window, computed with numpy from the store, not the store's all-times statistics."""
    from xkmcast.data.prepare import open_store
    from xkmcast.train.setup import build_run

    ds = open_store(store)
    times = ds.time.values
    window = (str(times[0])[:19], str(times[9])[:19])
    cfg = tiny_config(store, tmp_path, f"data.train_times={{start: '{window[0]}', end: '{window[1]}'}}",
                      f"data.valid_times={{start: '{str(times[10])[:19]}'}}")
    pipeline, train_set, _ = build_run(cfg)
    got = pipeline.spec.stats["output"]["t2m"]
    values = ds["target_t2m"].sel(time=slice(*window)).values.astype(np.float64)
    np.testing.assert_allclose([got["mean"], got["std"]], [values.mean(), values.std()], rtol=1e-6)
    everything = ds["target_t2m"].values.astype(np.float64)
    assert abs(got["std"] - everything.std()) > 1e-4 * everything.std()


def test_progress_lines_go_to_non_tty_logs_every_n_steps(tmp_path, capsys):
    """stderr is not a terminal under pytest: a plain progress line every progress_every steps and
    at the last step; none with quiet."""
    from xkmcast.train.logging import RunLog

    log = RunLog(tmp_path / "run", total_steps=25, tensorboard=False, progress_every=10)
    for step in range(1, 26):
        log.progress(step, 0.5 / step, 8.0)
    log.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if "step" in line]
    assert [line.split("step ")[1].split(" ")[0] for line in lines] == ["10/25", "20/25", "25/25"]
    assert "loss 0.05," in lines[0] and "samples/s" in lines[0] and "ETA" in lines[0]
    quiet = RunLog(tmp_path / "q", total_steps=25, tensorboard=False, progress_every=10, quiet=True)
    for step in range(1, 26):
        quiet.progress(step, 1.0, 8.0)
    quiet.close()
    assert "step" not in capsys.readouterr().err


def test_the_eta_of_a_run_under_a_time_budget_is_the_budget_left(tmp_path, capsys):
    """A run with a huge step count and a time budget ends with the budget: its ETA says so."""
    from xkmcast.train.logging import RunLog

    log = RunLog(tmp_path / "run", total_steps=10**8, tensorboard=False, progress_every=1, time_left=lambda: 95.0)
    log.progress(1, 1.0, 8.0)
    free = RunLog(tmp_path / "free", total_steps=10**8, tensorboard=False, progress_every=1)
    free.progress(1, 1.0, 8.0)
    lines = [line for line in capsys.readouterr().err.splitlines() if "ETA" in line]
    assert lines[0].startswith(f"{tmp_path.name}/run: step 1 (time budget) loss 1,")
    assert lines[0].endswith("ETA 1m35s")
    assert "step 1/100000000 (0%)" in lines[1] and not lines[1].endswith("ETA 1m35s") and "ETA ?" not in lines[1]


def _bundle_weights(bundle: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(bundle / "weights.safetensors"))


def test_a_record_shorter_than_a_batch_trains_on_batches_of_what_it_holds(store, tmp_path, capfd):
    """16 training samples (20 times, the last 4 validating) and training.batch_size=32: the run trains
    on batches of 16, says so, and its config.yaml and samples seen record it."""
    import yaml

    result = train(tiny_config(store, tmp_path, "training.batch_size=32", "training.duration=2",
                               "training.validate_every=100"))
    assert "training.batch_size 32 -> 16: the training set holds 16 samples" in capfd.readouterr().err
    assert result.samples == 2 * 16 and result.step == 2
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["training"]["batch_size"] == 16


def test_export_holds_the_best_validation_weights(store, tmp_path):
    # a learning rate high enough that the validation loss goes up again: the run's best validation is
    # before its end; the exported bundle must equal a second, identical run stopped at that step
    over = ["training.lr=0.02", "training.ema.enabled=false", "training.validate_every=2", "training.duration=10",
            "training.checkpoint_every=1000", FROM_INTERPOLATION]
    full = train(tiny_config(store, tmp_path / "full", *over), quiet=True)
    steps, losses = zip(*full.valid_losses)
    best_step = steps[int(np.argmin(losses))]
    assert best_step < full.step, f"the scenario needs a best validation before the end: {full.valid_losses}"
    cut = train(tiny_config(store, tmp_path / "cut", *over, f"training.duration={best_step}",
                            "training.export_weights=last"), quiet=True)
    got, want = _bundle_weights(full.bundle), _bundle_weights(cut.bundle)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    last = train(tiny_config(store, tmp_path / "last", *over, "training.export_weights=last"), quiet=True)
    assert any(not torch.equal(_bundle_weights(last.bundle)[k], want[k]) for k in want)
