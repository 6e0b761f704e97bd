"""The regression loss weighs each output channel by the inverse mean square of the departure it learns
(model.loss.channel_weights: balanced, the ViT's auto; xkmcast.train.loss_weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _nets import randomise
from _tiny import FINE_SHAPE, stats_for

from xkmcast.data.stats import Stats
from xkmcast.models import build_pipeline, corrdiff_spec, vit_spec
from xkmcast.train.config import load_config
from xkmcast.train.loss_weights import balanced_channel_weights

STATE = ["t2m", "u10m", "v10m"]


def _expected(departures: np.ndarray) -> np.ndarray:
    """(1 / q_c) / mean(1 / q_c), q_c the mean square of the finite departures (N, C, H, W) (numpy)."""
    q = np.nanmean(departures.astype(np.float64) ** 2, axis=(0, 2, 3))
    return (1 / q) / np.mean(1 / q)


def train_quiet(cfg):
    from xkmcast.train.trainer import train

    return train(cfg, quiet=True)


def _vit(skip: bool = True):
    spec = vit_spec(STATE, FINE_SHAPE, size="tiny")
    spec.extra["input_skip"] = skip
    pipe = build_pipeline(spec).eval()
    randomise(pipe, seed=1)
    return pipe


def _forecast_items(scales, n=5, seed=0, nan_at=None):
    """Pairs (x_t, x_t + tendency) with tendency RMS ``scales`` per channel; a NaN at ``nan_at`` (i, c, y, x)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        prev = torch.randn(len(STATE), *FINE_SHAPE, generator=g) * 3.0
        tendency = torch.randn(len(STATE), *FINE_SHAPE, generator=g) * torch.tensor(scales)[:, None, None]
        nxt = prev + tendency
        if nan_at is not None and nan_at[0] == i:
            nxt[nan_at[1:]] = float("nan")
        items.append({"state": [prev, nxt]})
    return items


def test_forecast_weights_balance_the_tendencies_not_the_states():
    """A forecast model with the skip learns x_{t+1} - x_t: the weights follow the tendencies' mean squares
    (a NaN pixel left out), not the states'; without the skip it learns x_{t+1} itself."""
    items = _forecast_items([0.2, 1.0, 3.0], nan_at=(2, 1, 3, 4))
    tendency = np.stack([(it["state"][1] - it["state"][0]).numpy() for it in items])
    weights = balanced_channel_weights(_vit(), items)
    np.testing.assert_allclose(weights, _expected(tendency), rtol=1e-6)
    assert np.mean(weights) == pytest.approx(1.0) and weights[0] / weights[2] == pytest.approx(225, rel=0.2)
    states = np.stack([it["state"][1].numpy() for it in items])
    np.testing.assert_allclose(balanced_channel_weights(_vit(skip=False), items), _expected(states), rtol=1e-6)


def test_the_regression_loss_is_the_weighted_mean_of_the_channels_errors():
    pipe = _vit()
    items = _forecast_items([0.2, 1.0, 3.0])
    prev, nxt = (torch.stack([it["state"][j] for it in items]) for j in (0, 1))
    w = [2.0, 0.5, 0.5]
    with torch.no_grad():
        error = (pipe.step(prev) - nxt) ** 2  # eval mode: the forecast's F is the loss's
        pipe.spec.loss["channel_weights"] = w
        got = pipe.loss("regression", {"state": [prev, nxt]}).loss
    expect = (error * torch.tensor(w)[None, :, None, None]).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)


def test_corrdiff_weights_balance_the_departure_from_interpolation_and_mean_detail():
    """Targets = interp(x) + D + e with e of RMS 0.5 (t2m) and 2 (tp) and a large fixed detail D: the
    weights follow e alone (D is part of what the regression adds to its network's output)."""
    inputs, outputs = ["t2m", "msl"], ["t2m", "tp"]
    spec = corrdiff_spec(inputs, outputs, FINE_SHAPE, size="tiny", input_skip=True, stages=("regression",))
    spec.stats = {"input": stats_for(inputs), "invariant": {},
                  "output": Stats({"t2m": 290.0, "tp": 0.3}, {"t2m": 4.0, "tp": 0.5}).to_dict()}
    pipe = build_pipeline(spec).eval()
    g = torch.Generator().manual_seed(4)
    detail = torch.randn(2, *FINE_SHAPE, generator=g) * 5.0
    pipe.mean_detail.resize_(detail.shape).copy_(detail)
    items, errors = [], []
    for _ in range(4):
        cond = torch.randn(len(inputs), *FINE_SHAPE, generator=g)
        e = torch.randn(2, *FINE_SHAPE, generator=g) * torch.tensor([0.5, 2.0])[:, None, None]
        items.append({"input": cond, "target": pipe.interpolation(cond[None])[0] + detail + e})
        errors.append(e.numpy())
    np.testing.assert_allclose(balanced_channel_weights(pipe, items), _expected(np.stack(errors)), rtol=1e-5)


def test_no_samples_no_weights():
    assert balanced_channel_weights(_vit(), []) is None


@pytest.mark.slow
def test_which_runs_weigh_their_regression_loss(tmp_path_factory, tmp_path):
    """On the synthetic store: a CorrDiff regression run weighs equally by default (``auto``: its kind's
    row has no ``balanced_regression``), ``balanced`` records the weights measured on its training samples
    (mean 1), an explicit list is kept as given; the diffusion run on a balanced regression has none (its
    residual is scaled per channel already); a ViT run is balanced by default."""
    import xkmcast
    from test_train_trainer import prepared_store, tiny_config

    torch.set_num_threads(1)
    store = prepared_store(tmp_path_factory)
    short = ("training.duration=2", "training.validate_every=2", "training.checkpoint_every=2")

    def weights(*extra, preset=None):
        cfg = load_config(preset, [*extra]) if preset else tiny_config(store, tmp_path, *short, *extra)
        return xkmcast.load_model(train_quiet(cfg).bundle).spec.loss.get("channel_weights")

    assert weights("training.experiment=auto") is None
    reg = train_quiet(tiny_config(store, tmp_path, *short, "training.experiment=balanced",
                                  "model.loss.channel_weights=balanced"))
    balanced = xkmcast.load_model(reg.bundle).spec.loss["channel_weights"]
    assert len(balanced) == 2 and np.mean(balanced) == pytest.approx(1.0) and balanced[0] != pytest.approx(balanced[1])
    assert weights("training.experiment=given", "model.loss.channel_weights=[3.0, 1.0]") == [3.0, 1.0]
    assert weights("model.stage=diffusion", "training.experiment=diff", f"model.regression_bundle={reg.bundle}") is None
    vit = weights(*short, f"training.outdir={tmp_path}", "training.batch_size=4", "training.tensorboard=false",
                  "training.device=cpu", "data.params.times=8", preset="vit-tiny")
    assert len(vit) == 3 and np.mean(vit) == pytest.approx(1.0)


def test_auto_is_the_default_and_validated():
    assert load_config("vit-tiny").model.loss.channel_weights == "auto"
    assert load_config("vit-tiny", ["model.loss.channel_weights=balanced"]).model.loss.channel_weights == "balanced"
    with pytest.raises(Exception, match="channel_weights"):
        load_config("vit-tiny", ["model.loss.channel_weights=uniform"])
