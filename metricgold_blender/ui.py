"""Menu entries: Image Editor > Image, 3D Viewport > Add (and so F3 search, which searches menus)."""

from __future__ import annotations

from typing import Any

import bpy


class VIEW3D_MT_metricgold_add(bpy.types.Menu):
    bl_idname = "VIEW3D_MT_metricgold_add"
    bl_label = "MetricGold Depth"

    def draw(self, context: Any) -> None:
        layout: Any = self.layout
        layout.operator_context = "INVOKE_DEFAULT"
        layout.operator("metricgold.image_to_depth_mesh", text="Image \u2192 Metric Depth Mesh", icon="IMAGE_DATA")
        layout.operator("metricgold.image_to_point_cloud", text="Image \u2192 Metric Depth Point Cloud",
                        icon="POINTCLOUD_DATA")
        layout.operator("metricgold.depth_map_to_mesh", text="Depth Map \u2192 Mesh", icon="MESH_GRID")
        layout.operator("metricgold.sequence_to_depth_mesh", text="Image Sequence / Movie \u2192 Metric Depth Mesh",
                        icon="FILE_MOVIE")
        layout.operator("metricgold.depth_sequence_to_mesh", text="Depth Sequence \u2192 Mesh", icon="SEQUENCE")


def draw_view3d_add(self: Any, context: Any) -> None:
    self.layout.separator()
    self.layout.menu(VIEW3D_MT_metricgold_add.bl_idname, icon="OUTLINER_OB_IMAGE")


def draw_image_menu(self: Any, context: Any) -> None:
    layout = self.layout
    layout.separator()
    layout.operator_context = "INVOKE_DEFAULT"
    layout.operator("metricgold.image_to_depth_mesh", text="Image \u2192 Metric Depth Mesh", icon="IMAGE_DATA")
    layout.operator("metricgold.image_to_point_cloud", text="Image \u2192 Metric Depth Point Cloud",
                    icon="POINTCLOUD_DATA")
    layout.operator("metricgold.depth_map_to_mesh", text="Depth Map \u2192 Mesh", icon="MESH_GRID")


classes = (VIEW3D_MT_metricgold_add,)

MENUS = (("VIEW3D_MT_add", draw_view3d_add), ("IMAGE_MT_image", draw_image_menu))


def register_menus() -> None:
    for menu, draw in MENUS:
        getattr(bpy.types, menu).append(draw)


def unregister_menus() -> None:
    for menu, draw in MENUS:
        getattr(bpy.types, menu).remove(draw)
