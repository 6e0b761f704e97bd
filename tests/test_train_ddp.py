"""Data parallelism: batch arithmetic, and real 2-process runs under torchrun on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train_trainer import FROM_INTERPOLATION, prepared_store, tiny_config
from xkmcast.errors import ConfigError
from xkmcast.train import distributed as D
from xkmcast.train.checkpoint import latest_checkpoint, load_checkpoint
from xkmcast.train.config import save_config

ROOT = Path(__file__).resolve().parents[1]


def test_batch_split_and_accumulation():
    assert D.split_batch(64, 8) == (8, 1)
    assert D.split_batch(64, 8, per_rank=2) == (2, 4)  # 8 ranks x 2 samples x 4 accumulation steps
    assert D.split_batch(6, 1, per_rank=3) == (3, 2)
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        D.split_batch(10, 4)
    with pytest.raises(ConfigError, match="batch_size_per_rank"):
        D.split_batch(16, 2, per_rank=3)


def test_a_short_record_trains_on_batches_of_what_it_holds():
    """7 training samples cannot fill a batch of 8: batches of 7 on one process, of 2 x 3 on two (the
    seventh dropped each epoch); a record that fills the batch, one shorter than a sample per process,
    or a given per-process batch keep the configured batch (the trainer refuses the last two)."""
    assert D.batch_for_samples(8, 7, 1) == 7
    assert D.batch_for_samples(8, 7, 2) == 6
    assert D.batch_for_samples(8, 100, 2) == 8 and D.batch_for_samples(8, 8, 1) == 8
    assert D.batch_for_samples(8, 1, 2) == 8
    assert D.batch_for_samples(8, 7, 1, per_rank=2) == 8


def test_single_process_helpers_are_identities():
    env = D.DistEnv()
    assert not env.distributed and env.is_main
    t = torch.tensor([1.5, 2.5])
    assert torch.equal(D.all_mean(t, env), t)
    assert D.any_of([False, True], env) == [False, True]
    assert D.gather_objects({"a": 1}, env) == [{"a": 1}] and D.broadcast_object(3, env) == 3
    net = torch.nn.Linear(2, 2)
    assert D.wrap_stage(net, env) is net
    assert D.select_device("cpu") == torch.device("cpu")


def _torchrun(config: Path, tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "xkmcast.train.cli", "train", str(config), "--quiet", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_end_with_identical_weights_and_learn(tmp_path_factory, tmp_path, strategy):
    store = prepared_store(tmp_path_factory)
    cfg = tiny_config(store, tmp_path / "runs", "training.batch_size=8", "training.duration=16",
                      "training.validate_every=8", "training.valid_batches=2", "training.checkpoint_every=8",
                      f"training.strategy={strategy}", FROM_INTERPOLATION)
    config = save_config(cfg, tmp_path / "ddp.yaml")
    start = time.perf_counter()
    proc = _torchrun(config, tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "corrdiff-tiny-regression" / "0"
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["step"] == 16 for r in ranks)
    assert ranks[0]["sha256"] == ranks[1]["sha256"]  # the replicas never drifted apart
    valid = [json.loads(line)["valid_loss"] for line in (run / "log.jsonl").read_text().splitlines()
             if "valid_loss" in line]
    assert len(valid) == 2 and valid[1] < valid[0]
    state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["loss"], state["rng"][1]["loss"])  # each rank draws its own noise
    assert (run / "model" / "weights.safetensors").exists()
    print(f"2-rank {strategy} run: {elapsed:.1f} s")
