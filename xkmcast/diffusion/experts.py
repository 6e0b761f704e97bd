"""A denoiser made of sigma-range experts ("ensemble of experts", as NVIDIA's StormScope packages).

Expert k is an EDM denoiser D_k trained on noise levels [sigma_min_k, sigma_max_k]. At a sampler
step the network is chosen by the level sigma_i of the time-step grid the evaluation belongs to
(:func:`xkmcast.diffusion.samplers.solve` asks :meth:`SigmaExperts.for_level`): the experts sorted
by decreasing sigma_max, the first with

    sigma_min_k - 1e-7 <= sigma_i < sigma_max_k + 1e-7

(Earth2Studio's ``StormScopeBase._select_expert``; the churned sigma_hat = sigma_i (1 + gamma) the
network is evaluated at does not change the choice). The mixture's noise range is
[min_k sigma_min_k, max_k sigma_max_k]. Each expert is called in float32 (its input and sigma cast,
its output cast back), as Earth2Studio feeds PhysicsNeMo's preconditioner.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, explain

__all__ = ["SigmaExperts", "EXPERT_EPS"]

#: the tolerance of the range test (Earth2Studio's)
EXPERT_EPS = 1e-7


class SigmaExperts(torch.nn.Module):
    """Experts ``networks`` with their ``ranges`` [(sigma_min, sigma_max), ...] (any order)."""

    def __init__(self, networks: Sequence[torch.nn.Module], ranges: Sequence[tuple[float, float]]):
        super().__init__()
        if not networks or len(networks) != len(ranges):
            raise ConfigError(explain("Sigma experts need one noise range per network",
                                      expected="equal, non-zero counts", found=(len(networks), len(ranges))))
        order = sorted(range(len(ranges)), key=lambda k: float(ranges[k][1]), reverse=True)
        self.experts = torch.nn.ModuleList([networks[k] for k in order])
        self.ranges = [(float(ranges[k][0]), float(ranges[k][1])) for k in order]
        self.sigma_min = self.ranges[-1][0]
        self.sigma_max = self.ranges[0][1]

    def index_for(self, level: float) -> int:
        """The expert of grid level ``level`` (see the module doc); ConfigError when none covers it."""
        for k, (lo, hi) in enumerate(self.ranges):
            if lo - EXPERT_EPS <= level < hi + EXPERT_EPS:
                return k
        raise ConfigError(explain("No expert covers this noise level", expected=self.ranges, found=level,
                                  fix="sample within the experts' noise range"))

    def for_level(self, level: float):
        """The denoiser of the expert for ``level``, called in float32."""
        net = self.experts[self.index_for(level)]

        def denoise(x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
            kwargs = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kwargs.items()}
            return net(x.float(), sigma.float(), **kwargs).to(x.dtype)

        return denoise

    def forward(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        """D(x; sigma) with the expert chosen by sigma itself (one value for the batch)."""
        return self.for_level(float(sigma.reshape(-1)[0]))(x, sigma, **kwargs)
