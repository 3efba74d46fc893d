"""MetricGold for Blender: a photo in, a mesh (or point cloud) in metres and a matching camera out.

The add-on never imports torch: predictions run in a worker process (the Python set in the preferences) reached
through ``metricgold_engine.core.client``; mesh building uses the torch-free ``metricgold_engine.core.geometry`` and
``depth_io`` (vendored inside the extension zip by ``build.py``). User guide: docs/blender.md.
"""

from __future__ import annotations

import bpy

from . import jobs, operators, preferences, sequence_mesh, sequence_predict, ui

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(
    (*preferences.classes, *operators.classes, *sequence_mesh.classes, *sequence_predict.classes, *ui.classes)
)


def register() -> None:
    _register_classes()
    ui.register_menus()
    getattr(bpy.types, "STATUSBAR_HT_header").append(preferences.draw_statusbar)
    try:
        if preferences.worker_environment().running():  # a set-up started before a restart of the add-on
            preferences.watch_setup()
    except Exception:  # never let the worker's folder keep the add-on from loading
        pass


def unregister() -> None:
    getattr(bpy.types, "STATUSBAR_HT_header").remove(preferences.draw_statusbar)
    if bpy.app.timers.is_registered(preferences._tick):
        bpy.app.timers.unregister(preferences._tick)
    try:
        preferences.worker_environment().cancel()  # no set-up process outlives the add-on either
    except Exception:
        pass
    ui.unregister_menus()
    _unregister_classes()
    jobs.close_all_clients()  # no worker outlives the add-on
