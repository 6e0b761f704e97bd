"""A user dataset class with the StormCast sample interface, as the recipe's users write them:
items already normalised, channel names and image shape reported by methods."""

from __future__ import annotations

import numpy as np

from xkmcast.data.synthetic import synthetic_pair


class ToyStormCastDataset:
    """Hourly synthetic states (t2m, u10m, v10m) on 24 x 24 with a coarse msl background regridded by
    nearest neighbour (np.repeat), normalised by their own mean / std."""

    def __init__(self, split: str = "train", times: int = 12, seed: int = 0):
        coarse, fine = synthetic_pair(nx=24, ny=24, factor=4, times=times, seed=seed)
        state = np.stack([fine[v].values for v in self.state_channels()], axis=1)
        bg = np.repeat(np.repeat(coarse["msl"].values[:, None], 4, axis=2), 4, axis=3)
        self.state = (state - state.mean(axis=(0, 2, 3), keepdims=True)) / state.std(axis=(0, 2, 3), keepdims=True)
        self.background = (bg - bg.mean()) / bg.std()
        n = times - 1
        self.index = list(range(0, n - 2)) if split == "train" else list(range(n - 2, n))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        t = self.index[i]
        return {"background": self.background[t].astype(np.float32),
                "state": [self.state[t].astype(np.float32), self.state[t + 1].astype(np.float32)]}

    def state_channels(self) -> list[str]:
        return ["t2m", "u10m", "v10m"]

    def background_channels(self) -> list[str]:
        return ["msl"]

    def image_shape(self) -> tuple[int, int]:
        return (24, 24)
