"""Faults: signals stop cleanly with a checkpoint, SIGKILL resumes exactly, divergence keeps the last
good checkpoint, a checkpoint of another model is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train_trainer import prepared_store, tiny_config
from xkmcast.errors import CheckpointError
from xkmcast.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from xkmcast.train.config import save_config
from xkmcast.train.setup import build_run
from xkmcast.train.trainer import Trainer, TrainingDivergedError, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.set_num_threads(1)
    return prepared_store(tmp_path_factory)


class _Faulty(torch.utils.data.Dataset):
    """The real training samples; from the ``after``-th read on, ``fault(item)`` happens."""

    def __init__(self, inner, after: int, fault):
        self.inner, self.after, self.fault, self.reads = inner, after, fault, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        item = self.inner[i]
        return self.fault(item) if self.reads >= self.after else item


def _trainer(cfg, after, fault):
    pipeline, data, valid = build_run(cfg)
    return Trainer(cfg, pipeline=pipeline, train_data=_Faulty(data, after, fault), valid_data=valid, quiet=True)


def test_sigint_checkpoints_the_current_step_and_stops(store, tmp_path):
    cfg = tiny_config(store, tmp_path, "training.checkpoint_every=1000")

    sent = []

    def interrupt(item):
        if not sent:  # a real Ctrl-C, once, delivered during step 3's data loading
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return item

    result = _trainer(cfg, after=9, fault=interrupt).run()
    assert result.stop_reason == "SIGINT" and result.step == 3 and result.bundle is None
    assert load_checkpoint(latest_checkpoint(result.run_dir / "checkpoints"))["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path):
    cfg = tiny_config(store, tmp_path, "training.checkpoint_every=2")

    def poison(item):
        return {**item, "target": item["target"] * float("nan")}

    with pytest.raises(TrainingDivergedError) as err:
        _trainer(cfg, after=4 * 5 + 1, fault=poison).run()  # the 6th step reads a NaN target
    assert "step 6" in str(err.value) and "ckpt-000000004.pt" in str(err.value)
    ckpts = list_checkpoints(tmp_path / "corrdiff-tiny-regression" / "0" / "checkpoints")
    assert [p.name for p in ckpts][-1] == "ckpt-000000004.pt"
    state = load_checkpoint(ckpts[-1])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resuming_with_another_model_is_refused(store, tmp_path):
    train(tiny_config(store, tmp_path, "training.duration=2"), quiet=True)
    with pytest.raises(CheckpointError, match=r"differing keys: .*data\.output_vars"):
        train(tiny_config(store, tmp_path, "training.duration=4", "data.output_vars=[t2m]"), quiet=True)


def _launch(config: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "xkmcast.train.cli", "train", str(config), "--quiet", *overrides],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, folder: Path, beyond: int, timeout: float = 240) -> int:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        last = latest_checkpoint(folder)
        if last is not None and int(last.stem.split("-")[1]) > beyond:
            return int(last.stem.split("-")[1])
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_matches_an_uninterrupted_run(store, tmp_path):
    cfg = tiny_config(store, tmp_path / "runs", "training.duration=100000", "training.checkpoint_every=2",
                      "training.validate_every=1000000", "training.experiment=killed")
    config = save_config(cfg, tmp_path / "killed.yaml")
    folder = tmp_path / "runs" / "killed" / "0" / "checkpoints"

    proc = _launch(config)  # 1. SIGTERM: checkpoint at the current step, exit 128 + 15
    _wait_for_checkpoint(proc, folder, beyond=0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err
    stopped = json.loads((folder.parent / "ranks" / "rank0.json").read_text())["step"]
    assert load_checkpoint(latest_checkpoint(folder))["step"] == stopped

    proc = _launch(config)  # 2. resume, then SIGKILL: no chance to clean up
    killed_at = _wait_for_checkpoint(proc, folder, beyond=stopped)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    last = load_checkpoint(latest_checkpoint(folder))["step"]
    assert last >= killed_at > stopped

    # 3. re-running resumes from the last complete checkpoint; the weights equal an uninterrupted run
    target = last + 3
    resumed = train(cfg.model_copy(update={"training": cfg.training.model_copy(update={"duration": target})}),
                    quiet=True)
    straight_cfg = tiny_config(store, tmp_path / "runs", f"training.duration={target}", "training.checkpoint_every=2",
                               "training.validate_every=1000000", "training.experiment=straight")
    straight = train(straight_cfg, quiet=True)
    assert resumed.step == straight.step == target
    a = load_checkpoint(latest_checkpoint(folder))["model"]
    b = load_checkpoint(latest_checkpoint(straight.run_dir / "checkpoints"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
