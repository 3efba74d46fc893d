"""The ground floor of MetricGold's engine, as the add-on sees it.

Installed as a Blender extension, the torch-free engine floor (``metricgold_engine.core``) travels inside the add-on
as the subpackage ``_vendor.metricgold_engine.core`` (``build.py`` puts it there) and is imported relatively:
extensions may not rely on top-level names on ``sys.path``. In a source checkout (tests, ``python
scripts/image_to_mesh.py``) the same modules are the top-level ``metricgold_engine.core`` package. Either way the rest of the add-on imports them from here.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec(f"{__package__}._vendor") is not None:
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

__all__ = ["ENGINE_VERSION", "client", "demo_model", "depth_io", "geometry", "mesh_size"]
