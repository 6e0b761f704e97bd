"""xarray functions over CF fields: the layer between the torch kernels (``nn``, ``diffusion``,
``models``) and the ``.kmcast`` accessor.

grid and variables (what a dataset holds), regrid, downscale and forecast (models on xarray),
metrics, spectra, resampling (bootstrap intervals of scores) and scoring, baselines (the linear statistical downscaling to beat), plot, io. Each module works on xarray objects and is what an
accessor method binds.
"""
