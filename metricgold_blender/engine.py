"""The ground floor of MetricGold's engine, as the add-on sees it.

Installed as a Blender extension, the torch-free engine floor (``metricgold_engine.core``) travels inside the add-on
as the subpackage ``_vendor.metricgold_engine.core`` (``build.py`` puts it there) and is imported relatively:
extensions may not rely on top-level names on ``sys.path``. In a source checkout (tests, ``python
scripts/image_to_mesh.py``) the same modules are the top-level ``metricgold_engine.core`` package. Either way the rest of the add-on imports them from here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ADDON_DIR = Path(__file__).resolve().parent
VENDORED = importlib.util.find_spec(f"{__package__}._vendor") is not None

if VENDORED:
    from ._vendor.metricgold_engine import __version__ as ENGINE_VERSION  # type: ignore[import-not-found]
    from ._vendor.metricgold_engine.core import (  # type: ignore[import-not-found]
        client,
        demo_model,
        depth_io,
        geometry,
        mesh_size,
    )
else:  # source checkout: the engine is a sibling package
    from metricgold_engine import __version__ as ENGINE_VERSION
    from metricgold_engine.core import client, demo_model, depth_io, geometry, mesh_size

#: A folder that, put first on a Python's sys.path, makes ``metricgold_engine.core.client`` this add-on's client (the
#: worker set-up checks the new environment with it).
CLIENT_SYS_PATH = ADDON_DIR / "_vendor" if VENDORED else ADDON_DIR.parent
#: Where build.py puts the engine's wheel inside the extension.
ENGINE_WHEEL = ADDON_DIR / "engine_wheel" / f"metricgold-{ENGINE_VERSION}-py3-none-any.whl"


def engine_source() -> Path | None:
    """What the worker set-up installs as the engine: the wheel inside the extension, or in a source checkout the
    checkout itself; None when neither is there."""
    if ENGINE_WHEEL.is_file():
        return ENGINE_WHEEL
    if not VENDORED and (ADDON_DIR.parent / "pyproject.toml").is_file():
        return ADDON_DIR.parent
    return None


__all__ = ["ENGINE_VERSION", "CLIENT_SYS_PATH", "ENGINE_WHEEL", "client", "demo_model", "depth_io", "engine_source", "geometry",
           "mesh_size"]
