"""The exponential moving average of a module's weights (:class:`EMA`), FSDP2 shards included.

``w_ema <- beta w_ema + (1 - beta) w`` after each optimizer step; ``beta`` is ``cfg.decay`` when set,
else ``0.5 ** (batch_size / h)`` with ``h`` the half-life in samples (``cfg.halflife_samples``), ramped
up as ``min(h, samples_seen x cfg.rampup_ratio)`` (the EDM recipe's schedule). The shadow weights are
saved and loaded as full CPU tensors, so a checkpoint does not depend on how the weights were sharded.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["EMA", "full_tensor"]


class EMA:
    """Shadow weights ``w_ema <- beta w_ema + (1 - beta) w`` (buffers copied), see ``EMAConfig``."""

    def __init__(self, module: torch.nn.Module, cfg, batch_size: int):
        self.cfg, self.batch_size = cfg, batch_size
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]

    def beta(self, samples_seen: int) -> float:
        if self.cfg.decay is not None:
            return self.cfg.decay
        h = self.cfg.halflife_samples
        if self.cfg.rampup_ratio is not None:
            h = min(h, samples_seen * self.cfg.rampup_ratio)
        return 0.5 ** (self.batch_size / max(h, 1e-8))

    @torch.no_grad()
    def update(self, samples_seen: int) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.beta(samples_seen))

    @contextlib.contextmanager
    def applied(self):
        """Temporarily put the EMA weights into the module."""
        with torch.no_grad():
            backup = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)

    def state_dict(self) -> list[torch.Tensor]:
        return [full_tensor(s).to("cpu").clone() for s in self.shadow]

    def load_state_dict(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for s, t in zip(self.shadow, tensors):
                _load_into(s, t)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2 shard) gathered to a full tensor; plain tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach()


def _load_into(dst: torch.Tensor, full: torch.Tensor) -> None:
    if hasattr(dst, "device_mesh"):  # DTensor: keep this rank's shard
        from torch.distributed.tensor import distribute_tensor

        dst.copy_(distribute_tensor(full.to(dst.device), dst.device_mesh, dst.placements))
    else:
        dst.copy_(full)


