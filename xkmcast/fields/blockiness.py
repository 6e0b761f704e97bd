"""Blockiness: how much larger the jumps between neighbouring points are at a period (patch seams) than elsewhere.

A transformer that writes each p x p patch from one token leaves seams every p points. Along an
axis of n points, the neighbour differences d_i = f_{i+1} - f_i (i = 0 .. n - 2) split into seam
differences, where (i + 1 - offset) is a multiple of ``period``, and the others. Over both axes of
``dims`` (and NaN-skipping):

    blockiness = mean(|d_i| over seams) / mean(|d_i| elsewhere).

About 1 for fields without seams (exactly 1 in expectation for white noise and for any field that is
statistically homogeneous); > 1 when the seams carry extra jumps; inf for a field constant on blocks.
Compare a model's value with the truth's (the truth's is the target, not 1, when the true field has
structure at that period). Dimensions not in ``dims`` are kept. Nothing here knows of torch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from ..errors import InvalidDataError, explain

__all__ = ["blockiness"]


def blockiness(field: xr.DataArray, period: int = 4, dims: Sequence[Hashable] = ("y", "x"), offset: int = 0) -> xr.DataArray:
    """Seam / non-seam ratio of mean absolute neighbour differences (see the module docstring)."""
    missing = [d for d in dims if d not in field.dims]
    if missing or period < 2:
        raise InvalidDataError(explain("blockiness needs the grid dimensions and a period of at least 2",
                                       expected=f"dims {list(dims)} in {list(field.dims)}, period >= 2",
                                       found=f"missing {missing}, period {period}"))  # fmt: skip
    seam_sum = other_sum = seam_n = other_n = 0
    for dim in dims:
        jumps = abs(field.diff(dim, label="lower"))
        index = np.arange(field.sizes[dim] - 1)
        seam = xr.DataArray((index + 1 - offset) % period == 0, dims=(dim,))
        seam_sum = seam_sum + jumps.where(seam).sum(dims)
        seam_n = seam_n + jumps.where(seam).count(dims)
        other_sum = other_sum + jumps.where(~seam).sum(dims)
        other_n = other_n + jumps.where(~seam).count(dims)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = (seam_sum / seam_n) / (other_sum / other_n)
    return result.rename("blockiness").assign_attrs(long_name=f"seam / non-seam neighbour jump ratio at period {period}",
                                                    units="1")  # fmt: skip
