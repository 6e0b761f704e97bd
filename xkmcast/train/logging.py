"""What a run reports: TensorBoard scalars, validation images, a progress bar, a JSON-lines log.

Only rank 0 reports (other ranks get a :class:`RunLog` that does nothing). Scalars go to TensorBoard
(``<run dir>/tensorboard``, imported lazily) and, one JSON object per line, to ``<run dir>/log.jsonl``
so that tests and scripts can read them without TensorBoard. The progress bar (tqdm) shows samples/s
and the ETA when stderr is a terminal; otherwise (a log file, a batch job) a plain line
``<experiment or stage>/<run id>: step S/N (P%) loss L, R samples/s, ETA T`` is written to stderr every
``progress_every`` steps (and at the last step); T is the time to step N or, with a time budget, to its
end if that comes first (the line then reads ``step S (time budget)``).
``quiet`` silences both.

Loss per noise level: the per-sample losses of a diffusion stage are binned by ``log10(sigma)`` into
:data:`SIGMA_EDGES` and logged as ``loss_sigma/<lo>-<hi>``, the mean over the logging interval.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["RunLog", "SigmaBins", "SIGMA_EDGES", "save_image"]

SIGMA_EDGES = (0.0, 0.02, 0.2, 1.0, 5.0, 20.0, math.inf)


class SigmaBins:
    """Running sums of the loss in bins of sigma (edges :data:`SIGMA_EDGES`)."""

    def __init__(self, edges: tuple[float, ...] = SIGMA_EDGES):
        self.edges = torch.tensor(edges[1:-1], dtype=torch.float64)
        self.labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.labels), dtype=torch.float64)
        self.counts = torch.zeros(len(self.labels), dtype=torch.float64)

    def add(self, loss: torch.Tensor, sigma: torch.Tensor) -> None:
        idx = torch.bucketize(sigma.detach().reshape(-1).double().cpu(), self.edges)
        self.sums.index_add_(0, idx, loss.detach().reshape(-1).double().cpu())
        self.counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))

    def means(self) -> dict[str, float]:
        return {f"loss_sigma/{lab}": float(s / c) for lab, s, c in zip(self.labels, self.sums, self.counts) if c > 0}


class RunLog:
    """Scalars, images and progress of a run. ``active=False`` (ranks > 0) makes every call a no-op."""

    def __init__(self, run_dir: str | Path, *, total_steps: int, start_step: int = 0, active: bool = True,
                 tensorboard: bool = True, quiet: bool = False, batch_size: int = 1, progress_every: int = 10,
                 time_left=None):
        self.run_dir, self.active, self.batch_size = Path(run_dir), active, batch_size
        self.name = f"{self.run_dir.parent.name}/{self.run_dir.name}"  # e.g. regression/0, <experiment>/0
        self.time_left = time_left  # () -> seconds of the time budget left (None: no budget)
        self.progress_every = max(1, int(progress_every))
        self._lines = active and not quiet  # plain progress lines when there is no terminal bar
        self.total_steps, self.start_step = total_steps, start_step
        self._writer = None
        self._bar = None
        self._jsonl = None
        self._t0 = time.perf_counter()
        if not active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "log.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is heavy

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step or None)
        if not quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             desc=self.name)
            self._lines = False

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.active:
            return
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()

    def message(self, text: str) -> None:
        """A line for the user (stderr, above the progress bar)."""
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def progress(self, step: int, loss: float, samples_per_s: float) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(loss=f"{loss:.4g}", samples_s=f"{samples_per_s:.1f}", refresh=False)
            self._bar.refresh()
        elif self._lines and (step % self.progress_every == 0 or step == self.total_steps):
            print(self._progress_line(step, loss, samples_per_s), file=sys.stderr, flush=True)

    def _progress_line(self, step: int, loss: float, samples_per_s: float) -> str:
        total = max(self.total_steps, 1)
        done = step - self.start_step
        elapsed = time.perf_counter() - self._t0
        to_total = elapsed / done * (total - step) if done > 0 else math.nan
        left = self.time_left() if self.time_left is not None else None
        budget_ends = left is not None and not (math.isfinite(to_total) and to_total <= left)
        eta = max(0.0, left) if budget_ends else to_total
        eta_text = "?" if not math.isfinite(eta) else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        where = f"{step} (time budget)" if budget_ends else f"{step}/{total} ({100 * step / total:.0f}%)"
        return f"{self.name}: step {where} loss {loss:.4g}, {samples_per_s:.1f} samples/s, ETA {eta_text}"

    def image(self, step: int, tag: str, png: Path) -> None:
        if not self.active or self._writer is None:
            return
        import numpy as np
        from matplotlib.image import imread

        arr = imread(png)[..., :3]
        self._writer.add_image(tag, np.ascontiguousarray(arr.transpose(2, 0, 1)), step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._jsonl is not None:
            self._jsonl.close()


def save_image(path: Path, target: torch.Tensor, prediction: torch.Tensor, names: list[str], title: str = "") -> Path:
    """A PNG with one column per channel: target (top) and prediction (bottom), shared colour scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target, prediction = target.detach().float().cpu(), prediction.detach().float().cpu()
    n = target.shape[0]
    fig = Figure(figsize=(2.2 * n, 4.4))  # its own Agg canvas: no pyplot, the user's backend untouched
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n, squeeze=False)
    for c in range(n):
        lo = float(torch.minimum(target[c].min(), prediction[c].min()))
        hi = float(torch.maximum(target[c].max(), prediction[c].max()))
        for row, (field, label) in enumerate(((target, "target"), (prediction, "prediction"))):
            ax = axes[row][c]
            ax.imshow(field[c].numpy(), origin="lower", vmin=lo, vmax=hi, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{names[c] if c < len(names) else c} {label}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
