"""The backends' error, in the engine's one error family."""

from __future__ import annotations

from ..core.errors import CheckpointError


class ModelLoadError(CheckpointError):
    """A model could not be found, fetched or used; the message is one line naming the model and what to do.
    (A :class:`CheckpointError`: the worker answers it with MODEL_LOAD_FAILED, the CLI prints it.)"""
