"""Scaling experiments: the same run at several sizes, each for a fixed budget, in one table.

``xkmcast scale CONFIG --factors 0.5 1 2 4 --types width depth batch resolution data precision``
runs, for every type and factor, the configuration scaled as follows (other settings unchanged):

* ``width``: the network's channel width (``model_channels`` of U-Nets, ``hidden_size`` of
  transformers) x factor, rounded to a multiple of 8 (U-Net group norms) or of the head count;
* ``depth``: blocks per level (U-Nets, ``num_blocks``) or transformer layers (``depth``) x factor;
* ``batch``: ``training.batch_size`` x factor with the learning rate x factor (linear scaling rule);
* ``resolution``: the synthetic grid (``data.params.nx``, ``ny``) x factor, or the training patch;
* ``data``: the number of synthetic times x factor, or the fraction of training times used;
* ``precision``: fp32 and amp-bf16 (the factors are ignored).

Every run trains for the same budget (``steps`` optimizer steps or ``seconds`` of wall clock) with
checkpoints and TensorBoard off, and reports parameters, FLOPs per step (first step,
``torch.utils.flop_counter``), samples/s and its final training and validation losses. The table goes
to ``<outdir>/<experiment>-scaling/scaling.csv`` and is printed.
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError, explain
from .config import TrainConfig, deep_merge, read_raw, run_dir, validate

__all__ = ["SCALE_TYPES", "scaled_config", "run_scaling", "write_table"]

SCALE_TYPES = ("width", "depth", "batch", "resolution", "data", "precision")
COLUMNS = ("type", "factor", "parameters", "flops_per_step", "samples_per_s", "steps", "final_loss", "valid_loss",
           "status")
HEADERS = ("type", "factor", "params", "FLOPs/step", "samples/s", "steps", "loss", "valid", "stop")


def _network(raw: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The network arguments in effect (size table + overrides) and whether it is a transformer."""
    from ..models.kinds import KIND_NAMES, get_kind
    from ..models.specs import DEFAULT_SIZE

    model = raw.get("model", {})
    kind = get_kind(model.get("kind", KIND_NAMES[0]))
    size = model.get("size", DEFAULT_SIZE)
    return {**kind.size_table().get(size, {}), **model.get("network", {})}, kind.sizes != "unet"


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def scaled_config(raw: dict[str, Any], kind: str, factor: float) -> dict[str, Any]:
    """A copy of the raw configuration dict scaled by ``factor`` along ``kind`` (see module docstring)."""
    out = copy.deepcopy(raw)
    model, data, training = (out.setdefault(k, {}) for k in ("model", "data", "training"))
    if kind in ("width", "depth"):
        net, transformer = _network(raw)
        over = model.setdefault("network", {})
        if kind == "width" and transformer:
            over["hidden_size"] = _round_to(net["hidden_size"] * factor, int(net.get("num_heads", 1)))
        elif kind == "width":
            over["model_channels"] = _round_to(net["model_channels"] * factor, 8)
        else:
            key = "depth" if transformer else "num_blocks"
            over[key] = max(1, int(round(net[key] * factor)))
    elif kind == "batch":
        base = int(training.get("batch_size", 8))
        training["batch_size"] = max(1, int(round(base * factor)))
        training["lr"] = float(training.get("lr", 2e-4)) * training["batch_size"] / base
        if training.get("batch_size_per_rank", "auto") != "auto":
            training["batch_size_per_rank"] = "auto"
    elif kind == "resolution":
        if data.get("patch"):
            data["patch"] = [_round_to(p * factor, 4) for p in data["patch"]]
        elif data.get("source") == "synthetic":
            params = data.setdefault("params", {})
            grid_factor = int(params.get("factor", 8))
            for key in ("nx", "ny"):
                params[key] = _round_to(int(params.get(key, 64)) * factor, 4 * grid_factor)
        else:
            raise ConfigError(explain("resolution scaling needs a synthetic source or data.patch",
                                      found=data.get("source"), fix="set data.patch=[ph,pw] or drop 'resolution'"))
    elif kind == "data":
        if data.get("source") == "synthetic":
            params = data.setdefault("params", {})
            params["times"] = max(4, int(round(int(params.get("times", 24)) * factor)))
        elif factor > 1:
            raise ConfigError(explain("data scaling above 1 needs a synthetic source", found=factor))
        else:
            data["train_fraction"] = factor
    elif kind == "precision":
        training["precision"] = "amp-bf16" if factor else "fp32"
    else:
        raise ConfigError(explain("unknown scaling type", expected=SCALE_TYPES, found=kind))
    return out


def _budget(raw: dict[str, Any], steps: int | None, seconds: float | None, tag: str, outdir: str | None) -> dict:
    t = raw.get("training", {})
    over: dict[str, Any] = {
        "experiment": f"{t.get('experiment', 'xkmcast')}-scaling", "run_id": tag, "resume": None,
        "tensorboard": False, "checkpoint_every": 10**9, "validate_every": 10**9, "image_every": None,
    }
    if outdir is not None:
        over["outdir"] = outdir
    if steps is not None:  # validate once, at the end
        over.update(duration=int(steps), duration_unit="steps", validate_every=int(steps))
    if seconds is not None:
        over["time_budget"] = float(seconds)
        if steps is None:
            over.update(duration=10**9, duration_unit="steps")
    return deep_merge(raw, {"training": over})


def run_scaling(config, overrides=(), *, factors=(0.5, 1.0, 2.0, 4.0), types=("width",), steps: int | None = 20,
                seconds: float | None = None, outdir: str | None = None, quiet: bool = True) -> list[dict[str, Any]]:
    """Train every scaled configuration for the budget; returns the table rows (and writes the CSV)."""
    from .trainer import Trainer

    bad = [t for t in types if t not in SCALE_TYPES]
    if bad:
        raise ConfigError(explain("unknown scaling type", expected=SCALE_TYPES, found=bad))
    raw = read_raw(config, overrides)
    rows: list[dict[str, Any]] = []
    table_dir = None
    for kind in types:
        kind_factors = (0, 1) if kind == "precision" else factors
        for factor in kind_factors:
            tag = f"{kind}-{factor:g}"
            cfg: TrainConfig = validate(_budget(scaled_config(raw, kind, factor), steps, seconds, tag, outdir))
            table_dir = run_dir(cfg).parent
            result = Trainer(cfg, quiet=quiet).run()
            valid = result.valid_losses[-1][1] if result.valid_losses else math.nan
            rows.append({
                "type": kind, "factor": cfg.training.precision if kind == "precision" else factor,
                "parameters": result.parameters, "flops_per_step": result.flops_per_step or math.nan,
                "samples_per_s": result.samples_per_second, "steps": result.step,
                "final_loss": result.train_loss, "valid_loss": valid, "status": result.stop_reason,
            })
    if table_dir is not None:
        write_table(rows, table_dir / "scaling.csv")
    return rows


def write_table(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def print_table(rows: list[dict[str, Any]]) -> None:
    """The table with rich (numbers in engineering notation)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*HEADERS, title="xkmcast scaling")
    for row in rows:
        table.add_row(*[_fmt(row[c]) for c in COLUMNS])
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a pipe or a log file: do not squeeze the columns to 80
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 100_000:
        return f"{value:.3e}"
    return str(value)
