"""The vocabularies of the prediction options, defined once for the pipeline, the protocol, the CLI and the add-on."""

from __future__ import annotations

#: DDIMScheduler's timestep spacings: "leading" is the paper's DDIM, "trailing" suits 1-4 steps.
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
#: How the ensemble is reduced in log-depth space: the median (= the median in metres) or the geometric mean.
ENSEMBLE_REDUCTIONS = ("median", "mean")
#: Devices a worker or the CLI accepts (plus "cuda:N").
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: ``processing_resolution`` 0: the model sees the photo at its own size (None: the checkpoint's default).
NATIVE_RESOLUTION = 0
#: Depth normalizations a checkpoint can use: "log" (eq. 3, the paper's) or "linear" (eq. 2).
NORMALIZATION_MODES: tuple[str, ...] = ("log", "linear")
