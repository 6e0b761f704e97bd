"""Tiny pipelines and grids shared by the model, inference and forecast tests (random weights)."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from xkmcast.data.stats import Stats
from xkmcast.fields.grid import find_grid, make_lambert_grid
from xkmcast.models import build_pipeline, corrdiff_spec, stormcast_spec

FINE_SHAPE = (16, 20)
INPUT_VARS = ["t2m", "u10m", "msl"]
OUTPUT_VARS = ["t2m", "u10m"]
STATE_VARS = ["t2m", "u10m", "v10m"]


def fine_grid() -> xr.Dataset:
    """A 16 x 20 Lambert conformal grid of 4 km around 24 N, 121 E (Taiwan)."""
    return make_lambert_grid(FINE_SHAPE[1], FINE_SHAPE[0], 4000.0, 24.0, 121.0)


def stats_for(names) -> dict:
    base = {"t2m": (288.0, 5.0), "u10m": (0.0, 3.0), "v10m": (0.0, 3.0), "msl": (101000.0, 500.0), "orog": (500.0, 400.0)}
    return Stats({n: base[n][0] for n in names}, {n: base[n][1] for n in names}).to_dict()


def attach_grid(pipeline, grid: xr.Dataset) -> None:
    g = find_grid(grid)
    pipeline.set_grid(g.lat, g.lon, grid_mapping=g.grid_mapping, x=g.x, y=g.y)


def tiny_corrdiff(seed: int = 0, patch=None, invariants: bool = True):
    torch.manual_seed(seed)
    inv = ["orog"] if invariants else []
    spec = corrdiff_spec(INPUT_VARS, OUTPUT_VARS, FINE_SHAPE, invariant_vars=inv, size="tiny", patch=patch,
                         sampler={"num_steps": 4})
    spec.stats = {"input": stats_for(INPUT_VARS), "output": stats_for(OUTPUT_VARS), "invariant": stats_for(inv)}
    pipe = build_pipeline(spec)
    attach_grid(pipe, fine_grid())
    if invariants:
        pipe.set_invariants(torch.randn(1, *FINE_SHAPE))
    return pipe.eval()


def export_mdlus_pair(pipe, folder) -> tuple[dict, dict]:
    """A CorrDiff pipeline as PhysicsNeMo exports it: ``({"regression": path, "diffusion": path}, spec)``
    with regression.mdlus / diffusion.mdlus (EDMPrecondSuperResolution) in ``folder`` and the metadata
    ``load_model(mdlus=..., spec=...)`` takes (the spec without networks, plus grid and invariants)."""
    from xkmcast.nn.mdlus import EDMCheckpoint, save_mdlus

    reg, dif = pipe.stages["regression"], pipe.stages["diffusion"]
    paths = {"regression": folder / "regression.mdlus", "diffusion": folder / "diffusion.mdlus"}
    save_mdlus(reg, paths["regression"])
    n_out = len(pipe.spec.output_vars)
    save_mdlus(EDMCheckpoint(network=dif.model, wrapper="EDMPrecondSuperResolution", sigma_data=0.5,
                             img_in_channels=dif.model.config["in_channels"] - n_out, img_out_channels=n_out),
               paths["diffusion"])
    spec = {k: v for k, v in pipe.spec.to_dict().items() if k != "networks"}
    spec.update(lat=pipe.grid_lat.numpy(), lon=pipe.grid_lon.numpy(), invariants=pipe.invariant.numpy())
    return paths, spec


def tiny_stormcast(seed: int = 0, stages=("regression", "diffusion"), patch=None):
    torch.manual_seed(seed)
    spec = stormcast_spec(STATE_VARS, FINE_SHAPE, background_vars=["msl"], invariant_vars=["orog"], size="tiny",
                          stages=stages, sampler={"num_steps": 3}, patch=patch,
                          diffusion_conditions=["state", "background", "invariant"] + (["regression"] if "regression" in stages else []))
    spec.stats = {"input": stats_for(STATE_VARS), "output": stats_for(STATE_VARS), "background": stats_for(["msl"]),
                  "invariant": stats_for(["orog"])}
    pipe = build_pipeline(spec)
    attach_grid(pipe, fine_grid())
    pipe.set_invariants(torch.randn(1, *FINE_SHAPE))
    return pipe.eval()


def coarse_dataset(times: int = 3, seed: int = 0) -> xr.Dataset:
    """ERA5-like 0.25 deg input covering the fine grid: descending latitude, hPa msl, short names."""
    rng = np.random.default_rng(seed)
    lat = np.arange(26.0, 21.9, -0.25)
    lon = np.arange(119.0, 123.1, 0.25)
    time = np.datetime64("2024-05-01T00", "ns") + np.arange(times) * np.timedelta64(1, "h")
    shape = (times, lat.size, lon.size)
    yy, xx = np.meshgrid(lat, lon, indexing="ij")
    return xr.Dataset(
        {
            "2t": (("time", "latitude", "longitude"), 290 + 0.5 * (yy - 24) + rng.normal(size=shape), {"units": "K"}),
            "10u": (("time", "latitude", "longitude"), 2 + rng.normal(size=shape), {"units": "m s**-1"}),
            "msl": (("time", "latitude", "longitude"), 1010 + rng.normal(size=shape), {"units": "hPa"}),
        },
        coords={
            "time": time,
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        },
    )


def state_dataset(times: int = 2, seed: int = 1) -> xr.Dataset:
    """A state on the fine grid (t2m, u10m, v10m) for forecasts."""
    rng = np.random.default_rng(seed)
    grid = fine_grid()
    time = np.datetime64("2024-05-01T00", "ns") + np.arange(times) * np.timedelta64(1, "h")
    shape = (times, *FINE_SHAPE)
    ds = grid.assign(
        t2m=(("time", "y", "x"), 288 + rng.normal(size=shape), {"units": "K", "grid_mapping": "crs"}),
        u10m=(("time", "y", "x"), rng.normal(size=shape), {"units": "m s-1", "grid_mapping": "crs"}),
        v10m=(("time", "y", "x"), rng.normal(size=shape), {"units": "m s-1", "grid_mapping": "crs"}),
    )
    return ds.assign_coords(time=time)


class Sequences:
    """Consecutive one-step pairs of state sequences, laid out as :class:`ForecastSamples` lays them
    (``pairs`` of store positions ``(i, j, k)``; a gap between sequences)."""

    def __init__(self, states: list[torch.Tensor], background: list[torch.Tensor]):
        self.states, self.background, self.pairs = [], [], []
        for seq, bg in zip(states, background):
            start = len(self.states)
            self.states += list(seq) + [seq[-1]]  # one filler position: no pair crosses the gap
            self.background += list(bg) + [bg[-1]] * 2  # the last state and the filler have no pair
            self.pairs += [(start + n, start + n + 1, 1) for n in range(len(seq) - 1)]

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        i, j, _ = self.pairs[index]
        return {"state": [self.states[i], self.states[j]], "background": self.background[i]}


def state_only_stormcast(stats, shape=FINE_SHAPE, seed: int = 0):
    """A nowcasting StormCast on the variables of ``stats`` (a :class:`~xkmcast.data.stats.Stats`: the
    regression sees the state, the diffusion the state and the regression mean), members centred on the
    regression mean, 3 sampler steps, O(1) random weights (:func:`_nets.randomise`)."""
    from _nets import randomise

    spec = stormcast_spec(list(stats.mean), shape, size="tiny", sampler={"num_steps": 3},
                          regression_conditions=["state"], diffusion_conditions=["state", "regression"])
    spec.stats = {"input": stats.to_dict(), "output": stats.to_dict()}
    spec.extra["centre_members"] = True
    pipe = build_pipeline(spec)
    randomise(pipe, seed=seed)
    return pipe.eval()

