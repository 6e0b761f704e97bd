"""The learning rate of each optimizer step (:func:`learning_rate`)."""

from __future__ import annotations

import math

from .config import TrainingConfig

__all__ = ["learning_rate"]


def learning_rate(step: int, t: TrainingConfig, total_steps: int) -> float:
    """``lr x min(1, (step+1)/warmup) x decay``, decay after warm-up over ``progress`` in [0, 1]:
    constant 1; cosine ``m + (1-m)(1+cos(pi p))/2``; linear ``m + (1-m)(1-p)`` (m = min_lr / lr);
    rsqrt ``sqrt(warmup / step)`` after the warm-up."""
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    span = max(1, total_steps - t.warmup_steps)
    p = min(1.0, max(0.0, (step - t.warmup_steps) / span))
    m = t.min_lr / t.lr
    decay = {
        "constant": 1.0,
        "cosine": m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p)),
        "linear": m + (1 - m) * (1 - p),
        "rsqrt": math.sqrt(max(1, t.warmup_steps) / max(step + 1, max(1, t.warmup_steps))),
    }[t.schedule]
    return t.lr * warm * decay
