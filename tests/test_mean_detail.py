"""The CorrDiff regression starts from the regridded input plus the training-mean fine detail, weighed
by how well that detail holds on times it was not computed from (xkmcast.train.mean_detail)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import FINE_SHAPE, stats_for

from xkmcast.data.stats import Stats
from xkmcast.models import build_pipeline, corrdiff_spec
from xkmcast.models.bundle import load_state
from xkmcast.train.mean_detail import mean_detail

INPUTS, OUTPUTS = ["t2m", "msl"], ["t2m", "tp"]


def _pipeline():
    spec = corrdiff_spec(INPUTS, OUTPUTS, FINE_SHAPE, size="tiny", input_skip=True, stages=("regression",))
    out_stats = Stats({"t2m": 290.0, "tp": 0.3}, {"t2m": 4.0, "tp": 0.5}).to_dict()
    spec.stats = {"input": stats_for(INPUTS), "output": out_stats, "invariant": {}}
    pipe = build_pipeline(spec).eval()
    for p in pipe.stages["regression"].parameters():  # R(c) = 0: the mean is the base alone
        torch.nn.init.zeros_(p)
    return pipe


def _items(pipe, departures, seed):
    """Samples whose targets are their interpolation plus the given departures (C_out, H, W) each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in departures:
        cond = torch.randn(len(INPUTS), *FINE_SHAPE, generator=g)
        out.append({"input": cond, "target": pipe.interpolation(cond[None])[0] + d})
    return out


def _pooled_factor(pairs):
    """The least-squares factor of the means in the departures of pairs (departure, mean), clipped to
    [0, 1]: sum <d, m'> / sum |m'|^2 (numpy, independent of the package)."""
    num = sum(float((d * m).sum()) for d, m in pairs)
    den = sum(float((m * m).sum()) for d, m in pairs)
    return min(max(num / den, 0.0), 1.0)


def test_stationary_detail_is_kept_and_detail_that_flips_sign_is_weighed_out():
    """t2m departs from interpolation by a fixed pattern P plus noise; tp by +Q or -Q in turn (2 of 3
    training times +Q, validation times -Q). Then m = the training mean, and w is the smaller of the
    least-squares factors over the pairs (validation time, m) and, cross-fitted, (training time k, mean
    of the other training times): near 1 for t2m, 0 for tp (clipped: the departures are anti-correlated
    with it)."""
    pipe = _pipeline()
    g = torch.Generator().manual_seed(0)
    P, Q = torch.randn(*FINE_SHAPE, generator=g), torch.randn(*FINE_SHAPE, generator=g)

    def dep(sign):
        return torch.stack([P + 0.3 * torch.randn(*FINE_SHAPE, generator=g), sign * Q])

    train = [dep(s).double().numpy() for s in (1, -1, 1)]
    valid = [dep(-1).double().numpy() for _ in range(2)]
    items = lambda deps, seed: _items(pipe, [torch.from_numpy(d).float() for d in deps], seed)
    detail, weights = mean_detail(pipe, items(train, 1), items(valid, 2))
    m = np.mean(train, axis=0)
    others = [np.mean(train[:k] + train[k + 1:], axis=0) for k in range(3)]
    for c in range(2):
        on_valid = _pooled_factor([(v[c], m[c]) for v in valid])
        on_blocks = _pooled_factor([(t[c], o[c]) for t, o in zip(train, others)])
        assert weights[c] == pytest.approx(min(on_valid, on_blocks), abs=1e-5), c
    assert weights[0] > 0.8 and weights[1] == 0.0
    torch.testing.assert_close(detail[0], torch.from_numpy(weights[0] * m[0]).float(), rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(detail[1]) == 0
    # without validation times the training times alone weigh the detail, cross-fitted
    detail, weights = mean_detail(pipe, items(train, 1))
    for c in range(2):
        assert weights[c] == pytest.approx(_pooled_factor([(t[c], o[c]) for t, o in zip(train, others)]), abs=1e-5)
    assert weights[0] > 0.8 and weights[1] == 0.0
    # one training time and no validation: nothing to weigh it by, and at weight 1 it would be the whole
    # departure of the one sample (nothing left to learn): no detail
    detail, weights = mean_detail(pipe, items(train[:1], 1))
    assert weights == [0.0, 0.0]
    assert torch.count_nonzero(detail) == 0


def test_cross_fitted_blocks_are_contiguous_runs_of_training_times():
    """With more training times than CROSS_FIT_BLOCKS, block k holds the k-th contiguous run of times:
    a detail present in the first half of the training times and absent from the second half is judged
    on each half by the other (w from the pooled pairs of the four blocks, numpy)."""
    from xkmcast.train.mean_detail import CROSS_FIT_BLOCKS

    pipe = _pipeline()
    g = torch.Generator().manual_seed(3)
    P = torch.randn(2, *FINE_SHAPE, generator=g)
    train = [((P if t < 4 else 0 * P) + 0.2 * torch.randn(2, *FINE_SHAPE, generator=g)).double().numpy()
             for t in range(8)]
    _, weights = mean_detail(pipe, _items(pipe, [torch.from_numpy(d).float() for d in train], 4))
    blocks = np.array_split(np.arange(8), CROSS_FIT_BLOCKS)
    pairs = [(train[t][c], np.mean([train[s] for s in range(8) if s not in b], axis=0)[c])
             for c in range(2) for b in blocks for t in b]
    for c in range(2):
        assert weights[c] == pytest.approx(_pooled_factor(pairs[c * 8:(c + 1) * 8]), abs=1e-5)
    assert 0.2 < weights[0] < 0.8  # a detail of half the record, judged on the other half


def test_the_regression_mean_adds_the_detail_on_whole_fields_and_on_windows():
    from xkmcast.diffusion.patching import global_index

    pipe = _pipeline()
    detail = torch.randn(len(OUTPUTS), *FINE_SHAPE, generator=torch.Generator().manual_seed(3))
    pipe.mean_detail.resize_(detail.shape).copy_(detail)
    cond = torch.randn(2, len(INPUTS), *FINE_SHAPE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = pipe.regression_mean(cond)
        torch.testing.assert_close(whole, pipe.interpolation(cond) + detail[None])
        offsets = torch.tensor([[2, 4], [5, 0]])
        gi = global_index(offsets, (8, 8))  # (2, 2, 8, 8): one window per row
        cut = torch.stack([cond[i, :, r:r + 8, c:c + 8] for i, (r, c) in enumerate(offsets.tolist())])
        windows = pipe.regression_mean(cut, gi)
    want = torch.stack([whole[i, :, r:r + 8, c:c + 8] for i, (r, c) in enumerate(offsets.tolist())])
    torch.testing.assert_close(windows, want)


def test_bundles_keep_the_detail_and_older_bundles_load_without_it():
    pipe = _pipeline()
    detail = torch.randn(len(OUTPUTS), *FINE_SHAPE, generator=torch.Generator().manual_seed(5))
    pipe.mean_detail.resize_(detail.shape).copy_(detail)
    tensors = {k: v.clone() for k, v in pipe.state_dict().items()}
    fresh = _pipeline()
    load_state(fresh, tensors, where="test")
    torch.testing.assert_close(fresh.mean_detail, detail)
    older = _pipeline()
    load_state(older, {k: v for k, v in tensors.items() if k != "mean_detail"}, where="test")
    assert older.mean_detail.numel() == 0
    cond = torch.randn(1, len(INPUTS), *FINE_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(older.regression_mean(cond), older.interpolation(cond))


def test_on_real_wrf_fields_the_detail_of_one_hour_halves_the_t2m_error_of_a_later_hour(guam_x4, tmp_path):
    """WRF Guam at 0.78 km coarsened x4 (no orography given): train on the first hour, validate on the
    second. The regression's base on the third hour, with the network at zero, is the bilinear input
    plus the detail: t2m's error is less than 0.6x bilinear's (its fine structure is the island's and
    stays), while v10m's detail, which changes from hour to hour, is weighed down."""
    from xkmcast.data.samples import DownscalingSamples
    from xkmcast.train import distributed as D
    from xkmcast.train.config import load_config
    from xkmcast.train.setup import build_datasets, build_pipeline_for

    fine, coarse = guam_x4
    fine.to_netcdf(tmp_path / "fine.nc")
    coarse.to_netcdf(tmp_path / "coarse.nc")
    t = [str(x)[:19] for x in fine["time"].values]
    cfg = load_config("corrdiff-tiny-regression", [
        f"data.source={tmp_path / 'fine.nc'}", f"data.coarse={tmp_path / 'coarse.nc'}", "data.params={}",
        "data.invariants=[]", "data.input_vars=[t2m,u10m,v10m]", "data.output_vars=[t2m,u10m,v10m]",
        "data.regrid_method=bilinear", f'data.train_times={{start: "{t[0]}", end: "{t[0]}"}}',
        f'data.valid_times=[{{start: "{t[1]}", end: "{t[1]}"}}]', f"training.outdir={tmp_path / 'runs'}"])
    data = build_datasets(cfg, None, D.DistEnv())
    pipe = build_pipeline_for(cfg, data).eval()
    weights = pipe.spec.extra["mean_detail_weights"]
    assert weights["t2m"] > 0.7 and weights["v10m"] < 0.5, weights
    # the same weights from the physical fields with xarray (normalisation scales d and m alike)
    d = fine[["t2m", "u10m", "v10m"]] - coarse.kmcast.regrid(fine, method="bilinear")[["t2m", "u10m", "v10m"]]
    m = d.isel(time=0)
    for v in ("t2m", "u10m", "v10m"):
        want = float((d[v].isel(time=1) * m[v]).sum() / (m[v] ** 2).sum())
        assert weights[v] == pytest.approx(min(max(want, 0.0), 1.0), abs=2e-3), (v, weights[v], want)
    for p in pipe.stages["regression"].parameters():
        torch.nn.init.zeros_(p)
    test = DownscalingSamples(data.train._path, ["t2m", "u10m", "v10m"], ["t2m", "u10m", "v10m"],
                              stats=data.train.stats, times=[2])[0]
    with torch.no_grad():
        base = pipe.regression_mean(test["input"][None])[0]
        interp = pipe.interpolation(test["input"][None])[0]
    err = (base - test["target"]).abs().mean(dim=(1, 2)).numpy()
    bilinear = (interp - test["target"]).abs().mean(dim=(1, 2)).numpy()
    assert err[0] < 0.6 * bilinear[0], (err, bilinear)
    assert err[1] < 0.85 * bilinear[1], (err, bilinear)
    assert err[2] < 1.1 * bilinear[2], (err, bilinear)
    np.testing.assert_array_less(0, bilinear)


def test_the_weight_is_the_smaller_factor_of_the_validation_times_and_the_blocks():
    """A detail that holds over the 8 training times (blocks: factor ~1) and is gone at the validation
    times (the record changed late) is weighed by the validation factor (~0), not their pooled fit
    (which the 8 training times would dominate); and the other way round, a detail judged ~0 by the
    blocks (present in half of them) is not brought back up by validation times that have it."""
    pipe = _pipeline()
    g = torch.Generator().manual_seed(5)
    P = torch.randn(2, *FINE_SHAPE, generator=g)
    noise = lambda: 0.2 * torch.randn(2, *FINE_SHAPE, generator=g)  # noqa: E731
    steady = [(P + noise()).double().numpy() for _ in range(8)]
    gone = [noise().double().numpy() for _ in range(2)]
    to_items = lambda deps, seed: _items(pipe, [torch.from_numpy(d).float() for d in deps], seed)  # noqa: E731
    _, weights = mean_detail(pipe, to_items(steady, 1), to_items(gone, 2))
    m = np.mean(steady, axis=0)
    for c in range(2):
        on_valid = _pooled_factor([(v[c], m[c]) for v in gone])
        assert weights[c] == pytest.approx(on_valid, abs=1e-5) and weights[c] < 0.2
    half = [((P if t < 4 else 0 * P) + noise()).double().numpy() for t in range(8)]
    kept = [(P + noise()).double().numpy() for _ in range(2)]
    _, weights = mean_detail(pipe, to_items(half, 3), to_items(kept, 4))
    _, on_blocks = mean_detail(pipe, to_items(half, 3))
    assert weights == pytest.approx(on_blocks, abs=1e-6) and max(weights) < 0.8
