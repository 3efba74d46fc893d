"""Where the built-in demo model is, whether it is installed, and which folder a model argument means.

Pure path logic, on the ground floor so that the worker, the CLI and the scripts ask the same question the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import CheckpointError

#: The built-in demo checkpoint (a small model trained by this project on its own synthetic data), used when no
#: model is given. See README "Demo model".
DEMO_MODEL_PATH = Path(__file__).resolve().parents[1] / "demo_model"
DEMO_MODEL_NOTE = ("small, trained only on synthetic scenes rendered by trainer.synth: expect rough depth; "
                   "see README 'Demo model'")


def demo_model_available() -> bool:
    """True when the demo checkpoint is installed beside the engine (it is not in the Blender extension's copy)."""
    return (DEMO_MODEL_PATH / "model_index.json").is_file()


def is_demo_model(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` (None: no model given) means the built-in demo model."""
    if path is None or str(path) == "":
        return True
    try:
        return Path(path).expanduser().resolve() == DEMO_MODEL_PATH.resolve()
    except OSError:
        return False


def resolve_model_path(path: str | os.PathLike[str] | None) -> Path:
    """The model folder to use: ``path``, or the built-in demo model when ``path`` is None or empty."""
    if path is None or str(path) == "":
        if not demo_model_available():
            raise CheckpointError(
                f"no model given and the built-in demo model is missing at {DEMO_MODEL_PATH}; pass --model PATH "
                "(a MetricGold checkpoint folder)"
            )
        return DEMO_MODEL_PATH
    return Path(path)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_id(model: str | os.PathLike[str] | None) -> bool:
    """Whether a model argument means a Hugging Face Hub id: ``org/name`` that is not an existing local path (a
    local folder always wins, so ``models/x`` next to the user is never fetched)."""
    if model is None:
        return False
    text = os.fspath(model)
    return bool(_HUB_ID.match(text)) and not Path(text).expanduser().exists()
