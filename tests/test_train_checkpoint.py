"""Checkpoints: atomic files, no pickled code, rotation, RNG round trip, refusal of a foreign config."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from xkmcast.errors import CheckpointError
from xkmcast.train.checkpoint import (
    check_signature,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state(step: int) -> dict:
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "rng": [rng_state()],
            "signature": {"model.kind": "corrdiff", "data.output_vars": ["t2m"]}, "best": float("inf")}


def test_round_trip_keeps_every_tensor_and_number(tmp_path):
    state = _state(5)
    path = save_checkpoint(tmp_path, state, step=5)
    back = load_checkpoint(path, signature=state["signature"])
    assert back["step"] == 5 and back["best"] == float("inf")
    for key, value in state["model"].items():
        assert torch.equal(back["model"][key], value)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters())
    opt.load_state_dict(back["optimizer"])  # the optimizer state is usable as is
    assert opt.state_dict()["state"][0]["step"] == state["optimizer"]["state"][0]["step"]


class _Arbitrary:  # a class a pickle could smuggle in
    pass


def test_files_with_arbitrary_objects_or_truncated_are_refused(tmp_path):
    bad = tmp_path / "ckpt-000000001.pt"
    torch.save({"model": {}, "step": 1, "payload": _Arbitrary()}, bad)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)  # weights_only=True refuses to unpickle the class
    good = save_checkpoint(tmp_path, _state(2), step=2)
    good.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(good)


def test_temporary_files_are_ignored_and_rotation_keeps_the_newest(tmp_path):
    (tmp_path / ".ckpt-000000009.pt.tmp-123").write_bytes(b"half written")  # a crash mid-write
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _state(step), step=step, max_keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000000003.pt", "ckpt-000000004.pt"]
    assert latest_checkpoint(tmp_path).name == "ckpt-000000004.pt"
    assert resolve_resume("latest", tmp_path) == latest_checkpoint(tmp_path)
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("latest", tmp_path / "nothing") is None
    assert resolve_resume(str(tmp_path), tmp_path / "x") == latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="cannot resume"):
        resolve_resume(str(tmp_path / "missing.pt"), tmp_path)


def test_a_checkpoint_of_another_model_is_refused_naming_the_keys(tmp_path):
    path = save_checkpoint(tmp_path, _state(1), step=1)
    other = {"model.kind": "corrdiff", "data.output_vars": ["t2m", "u10m"], "model.size": "tiny"}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, signature=other)
    text = str(err.value)
    assert "data.output_vars" in text and "model.size" in text and "model.kind" not in text.split("found")[0]
    check_signature({"a": 1}, {"a": 1})  # equal signatures pass
    check_signature({"a": 1, "b": 2}, {"a": 1})  # a setting the run no longer ties to the weights
    with pytest.raises(CheckpointError, match="differing keys: b"):
        check_signature({"a": 1}, {"a": 1, "b": 2})  # a setting the checkpoint cannot vouch for


def test_rng_states_restore_the_same_draws():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(7), np.random.rand(5), random.random()  # move on
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
