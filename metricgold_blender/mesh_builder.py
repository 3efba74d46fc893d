"""Blender-facing half of the add-on: depth map + intrinsics -> mesh or point cloud, material, camera.

The format logic (intrinsics, unprojection, faces) lives in ``metricgold_engine.core.geometry`` and is tested without
Blender; this module only moves its numpy arrays into Blender datablocks with ``foreach_set`` (never a per-vertex
Python loop) and sets up a camera that reproduces the intrinsics.

Everything :func:`build_depth_scene` creates is registered with a :class:`Created` tracker first, so that an error
half-way removes all of it: the scene is either fully built or left exactly as it was.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import bpy
import numpy as np

from .engine import depth_io, geometry

#: Name of the geometry-nodes group that shows a vertex-only mesh as render-able points.
POINTS_NODE_GROUP = "MetricGold Points"
#: Name of the shader node group that composites a colour on white by its alpha, as the worker does.
ON_WHITE_NODE_GROUP = "MetricGold On White"
#: Horizontal sensor width given to created cameras; with sensor fit HORIZONTAL only lens / sensor matters.
SENSOR_WIDTH_MM = 36.0


class BuildError(ValueError):
    """Input that cannot become a mesh; the message is meant for ``Operator.report``."""


@dataclass(frozen=True)
class BuildOptions:
    """How to turn a depth map into Blender data (all distances in metres)."""

    point_cloud: bool = False
    stride: int = 1
    #: Cut faces whose corners' depths differ by more than this fraction of the nearest (None: keep all).
    max_relative_jump: float | None = 0.05
    #: "EMISSION": the photo exactly as it is, unlit; "PRINCIPLED": a diffuse surface lit by the scene.
    shading: str = "EMISSION"
    #: Point radius as a multiple of half a (strided) pixel's footprint at the point's depth.
    point_size: float = 1.0
    set_scene_camera: bool = True
    location: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class BuildResult:
    collection: Any
    object: Any
    camera: Any
    vertex_count: int
    face_count: int


class Created:
    """Datablocks made during one build; :meth:`remove_all` undoes them (newest first)."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, Any]] = []

    def add(self, collection: Any, datablock: Any) -> Any:
        self._items.append((collection, datablock))
        return datablock

    def remove_all(self) -> None:
        for collection, datablock in reversed(self._items):
            try:
                collection.remove(datablock)
            except (ReferenceError, RuntimeError):
                pass  # already gone
        self._items.clear()


@contextmanager
def transaction() -> Iterator[Created]:
    """Yield a :class:`Created`; if the block raises, everything registered in it is removed again."""
    created = Created()
    try:
        yield created
    except BaseException:
        created.remove_all()
        raise


def metres_per_unit(scene: Any) -> float:
    """Metres in one Blender unit (the scene's unit scale; 0 or a non-metric system counts as 1)."""
    scale = float(scene.unit_settings.scale_length)
    return scale if scale > 0 else 1.0


# ---------------------------------------------------------------------------------------------------------------
# Images and depth files


def image_size(image: Any) -> tuple[int, int]:
    w, h = (int(x) for x in image.size)
    if w <= 0 or h <= 0:
        raise BuildError(f"image '{image.name}' has no pixels (is its file {image.filepath!r} missing?)")
    return w, h


def image_pixels(image: Any) -> np.ndarray:
    """The image as float32 H x W x 4 in its stored colour space, row 0 at the top (Blender stores bottom-up)."""
    w, h = image_size(image)
    channels = int(image.channels)
    buf = np.empty(w * h * channels, dtype=np.float32)
    image.pixels.foreach_get(buf)
    px = buf.reshape(h, w, channels)[::-1]
    if channels == 4:
        return np.ascontiguousarray(px)
    out = np.ones((h, w, 4), dtype=np.float32)
    out[..., :3] = px[..., :1] if channels < 3 else px[..., :3]
    return out


def load_image(path: str | os.PathLike[str], created: Created | None = None) -> Any:
    """Load an image file as a Blender image (reusing one already loaded); BuildError naming the file on failure."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BuildError(f"image not found: {path}")
    before = set(bpy.data.images)
    try:
        image: Any = bpy.data.images.load(path, check_existing=True)
    except RuntimeError as e:
        raise BuildError(f"{path}: Blender cannot read this image ({e})") from e
    if created is not None and image not in before:
        created.add(bpy.data.images, image)
    if image.size[0] == 0 or image.size[1] == 0:
        raise BuildError(f"{path}: Blender cannot read this image (no pixels)")
    return image


def _read_depth_with_blender(path: str) -> np.ndarray:
    """Read a 16-bit PNG or EXR depth through Blender's own image loader (no Pillow/OpenEXR in Blender's Python)."""
    try:
        image: Any = bpy.data.images.load(path, check_existing=False)
    except RuntimeError as e:
        raise depth_io.DepthFileError(f"{path}: Blender cannot read this depth file ({e})") from e
    try:
        image.colorspace_settings.is_data = True  # raw values, no colour transform
        w, h = image_size(image)
        buf = np.empty(w * h * int(image.channels), dtype=np.float32)
        image.pixels.foreach_get(buf)
        values = buf.reshape(h, w, int(image.channels))[::-1, :, 0].astype(np.float64)
        if path.lower().endswith(".png"):
            if int(image.depth) < 48 and not image.is_float:
                raise depth_io.DepthFileError(
                    f"{path}: an 8-bit PNG; a depth PNG must be 16-bit greyscale in millimetres")
            values = np.rint(values * 65535.0) / 1000.0  # Blender gives 16-bit PNGs as value / 65535
    finally:
        bpy.data.images.remove(image)
    depth = values.astype(np.float32)
    with np.errstate(invalid="ignore"):
        depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


def read_depth_file(path: str | os.PathLike[str]) -> np.ndarray:
    """``depth_io.read_depth``, falling back to Blender's image loader where Pillow or OpenEXR are missing."""
    path = os.fspath(path)
    try:
        return depth_io.read_depth(path)
    except ImportError:  # Pillow missing (16-bit PNG)
        pass
    except depth_io.DepthFileError as e:
        if not isinstance(e.__cause__, ImportError):
            raise
    return _read_depth_with_blender(path)


# ---------------------------------------------------------------------------------------------------------------
# Camera


def camera_settings(k: Any) -> dict[str, Any]:
    """Blender camera/render settings that reproduce intrinsics ``k`` (pure arithmetic, see docs/blender.md).

    Sensor fit HORIZONTAL makes the sensor width span the render width: ``lens / sensor_width = fx / W``. Lens shift
    is in units of the render width and moves the principal point off the centre ``((W-1)/2, (H-1)/2)``; Blender's
    +Y is up where image rows grow down, hence the sign. Non-square pixels (fx != fy) become a pixel aspect.
    """
    w, h = k.width, k.height
    if k.fy >= k.fx:
        aspect_x, aspect_y = k.fy / k.fx, 1.0
    else:
        aspect_x, aspect_y = 1.0, k.fx / k.fy
    return {
        "sensor_fit": "HORIZONTAL",
        "sensor_width": SENSOR_WIDTH_MM,
        "lens": k.fx * SENSOR_WIDTH_MM / w,
        "shift_x": ((w - 1) / 2.0 - k.cx) / w,
        "shift_y": (k.cy - (h - 1) / 2.0) * k.fx / (k.fy * w),
        "resolution_x": int(w),
        "resolution_y": int(h),
        "pixel_aspect_x": aspect_x,
        "pixel_aspect_y": aspect_y,
    }


def camera_matrix_world(location: tuple[float, float, float]) -> Any:
    """Camera looking along world +Y with +Z up (a level photo), at ``location``."""
    from mathutils import Euler, Matrix

    return Matrix.Translation(location) @ Euler((math.pi / 2.0, 0.0, 0.0), "XYZ").to_matrix().to_4x4()


def apply_render_settings(scene: Any, settings: dict[str, Any]) -> None:
    render = scene.render
    render.resolution_x = settings["resolution_x"]
    render.resolution_y = settings["resolution_y"]
    render.resolution_percentage = 100
    render.pixel_aspect_x = settings["pixel_aspect_x"]
    render.pixel_aspect_y = settings["pixel_aspect_y"]


# ---------------------------------------------------------------------------------------------------------------
# Mesh and material


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.maximum(c, 0.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


#: sRGB byte value -> linear, for 8-bit images (a table: 256 powers instead of one per pixel).
_SRGB_BYTE_TO_LINEAR = _srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)


def on_white(rgb_linear: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Linear colours composited on white by ``alpha`` in sRGB-encoded values, as the worker's image loader
    (Pillow's alpha_composite on 8-bit sRGB) does: ``encode(out) = a * encode(c) + (1 - a)``. The node group
    :func:`on_white_node_group` computes the same, per shading point."""
    a = np.clip(np.asarray(alpha, dtype=np.float64), 0.0, 1.0)[..., None]
    return _srgb_to_linear(a * _linear_to_srgb(np.asarray(rgb_linear, dtype=np.float64)) + (1.0 - a))


def image_has_alpha(image: Any) -> bool:
    """Whether an image stores an alpha channel (Blender gives every image 4 channels; ``depth`` tells: bits per
    pixel 32 for 8-bit RGBA or grey + alpha, 64 for 16-bit RGBA, 128 for float RGBA)."""
    return image.alpha_mode != "NONE" and int(image.depth) in (32, 64, 128)


def vertex_colours(gm: Any, depth_shape: tuple[int, int], image: Any | None, depth: np.ndarray) -> np.ndarray:
    """Linear RGBA per vertex: the photo's pixel under each vertex, or a Spectral depth colour without a photo."""
    if image is None:
        d_valid = depth[np.isfinite(depth)]
        lo, hi = float(d_valid.min()), float(d_valid.max())
        rgb8 = depth_io.colorize_depth(depth, lo, hi if hi > lo else lo + 1e-3)
        rgb = _srgb_to_linear(gm.vertex_values(rgb8).astype(np.float64) / 255.0)
        return np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1).astype(np.float32)
    px = image_pixels(image)
    hd, wd = depth_shape
    hi_, wi = px.shape[:2]
    # Pixel centre of the depth grid -> nearest pixel of the photo (they may differ in size).
    u = np.clip(np.rint((gm.pixels[:, 0] + 0.5) * wi / wd - 0.5), 0, wi - 1).astype(np.int64)
    v = np.clip(np.rint((gm.pixels[:, 1] + 0.5) * hi_ / hd - 0.5), 0, hi_ - 1).astype(np.int64)
    rgba = px[v, u]
    if not image.is_float and not image.colorspace_settings.is_data:
        # byte images hold sRGB-encoded values k / 255
        rgba[:, :3] = _SRGB_BYTE_TO_LINEAR[np.rint(rgba[:, :3] * 255.0).astype(np.uint8)]
    if image_has_alpha(image):  # what the depth was computed from: the photo on white
        rgba[:, :3] = on_white(rgba[:, :3], rgba[:, 3])
        rgba[:, 3] = 1.0
    return rgba.astype(np.float32, copy=False)


def _set_attribute(mesh: Any, name: str, key: str, values: np.ndarray, fallback: tuple[Any, str]) -> None:
    """Write a built-in attribute directly (one memcpy); older Blenders go through the legacy collection."""
    attr = mesh.attributes.get(name)
    if attr is not None:
        attr.data.foreach_set(key, values)
    else:
        collection, legacy_key = fallback
        collection.foreach_set(legacy_key, values)


def fill_mesh(mesh: Any, gm: Any, metres_per_bu: float) -> None:
    """Vertices, edges, quads and per-corner UVs of ``gm`` into an empty ``mesh``, all with foreach_set.

    The edges come from :func:`geometry.grid_edges`, so Blender's edge search (``update(calc_edges=True)``, most of
    the time of ``Mesh.from_pydata``) is not needed.
    """
    n_verts, n_faces, n_edges = len(gm.vertices), len(gm.faces), len(gm.edges)
    mesh.vertices.add(n_verts)
    co = (gm.vertices / metres_per_bu).astype(np.float32).ravel()
    _set_attribute(mesh, "position", "vector", co, (mesh.vertices, "co"))
    if n_faces:
        mesh.edges.add(n_edges)
        _set_attribute(mesh, ".edge_verts", "value", gm.edges.astype(np.int32).ravel(), (mesh.edges, "vertices"))
        mesh.loops.add(4 * n_faces)
        _set_attribute(mesh, ".corner_vert", "value", gm.faces.astype(np.int32).ravel(), (mesh.loops, "vertex_index"))
        _set_attribute(mesh, ".corner_edge", "value", gm.face_edges.astype(np.int32).ravel(), (mesh.loops, "edge_index"))
        mesh.polygons.add(n_faces)
        mesh.polygons.foreach_set("loop_start", np.arange(0, 4 * n_faces, 4, dtype=np.int32))
        # A FLOAT2 corner attribute is a UV map (Blender >= 3.5); uv_layers.new would first fill in default UVs.
        uv_map = mesh.attributes.new("UVMap", "FLOAT2", "CORNER")
        uv_map.data.foreach_set("vector", gm.uvs.astype(np.float32)[gm.faces.ravel()].ravel())
        mesh.uv_layers.active = mesh.uv_layers["UVMap"]
    mesh.update()


def add_point_attribute(mesh: Any, name: str, values: np.ndarray) -> None:
    attr = mesh.attributes.new(name, "FLOAT", "POINT")
    attr.data.foreach_set("value", np.asarray(values, dtype=np.float32).ravel())


def make_material(name: str, image: Any | None, shading: str, use_colour_attribute: bool,
                  created: Created | None = None) -> Any:
    """A node material showing the photo through the UVs (or the ``Color`` attribute, for points/no photo)."""
    mat: Any = bpy.data.materials.new(name)
    if mat.node_tree is None:  # Blender < 5.0 makes node trees on request; 5.0 always has one
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    out: Any = nodes.new("ShaderNodeOutputMaterial")
    out.location = (400, 0)
    colour_socket: Any
    if use_colour_attribute or image is None:
        colour: Any = nodes.new("ShaderNodeAttribute")
        colour.attribute_name = "Color"
        colour_socket = colour.outputs["Color"]
    else:
        tex: Any = nodes.new("ShaderNodeTexImage")
        tex.image = image
        tex.interpolation = "Closest"  # a texel per pixel: what the camera saw
        tex.extension = "EXTEND"
        colour_socket = tex.outputs["Color"]
        if image_has_alpha(image):  # show the photo on white, as the depth was computed from it
            group: Any = nodes.new("ShaderNodeGroup")
            group.node_tree = on_white_node_group(created)
            group.location = (-100, 0)
            links.new(tex.outputs["Color"], group.inputs["Color"])
            links.new(tex.outputs["Alpha"], group.inputs["Alpha"])
            colour_socket = group.outputs["Color"]
            tex.location = (-400, 0)
    if colour_socket.node.location.length == 0:
        colour_socket.node.location = (-300, 0)
    if shading == "PRINCIPLED":
        shader = nodes.new("ShaderNodeBsdfPrincipled")
        links.new(colour_socket, shader.inputs["Base Color"])
        links.new(shader.outputs["BSDF"], out.inputs["Surface"])
    else:
        shader = nodes.new("ShaderNodeEmission")
        links.new(colour_socket, shader.inputs["Color"])
        links.new(shader.outputs["Emission"], out.inputs["Surface"])
    return mat


def on_white_node_group(created: Created | None = None) -> Any:
    """Shader nodes: linear Color and Alpha in, the colour composited on white in sRGB-encoded values out (the
    formula of :func:`on_white`), per channel with Math nodes, which every Blender since 2.8 has.

    Made once per file and shared by the materials; a build that fails removes the group it made."""
    group: Any = bpy.data.node_groups.get(ON_WHITE_NODE_GROUP)
    if group is not None and group.bl_idname == "ShaderNodeTree":
        return group
    group = bpy.data.node_groups.new(ON_WHITE_NODE_GROUP, "ShaderNodeTree")
    if created is not None:
        created.add(bpy.data.node_groups, group)
    group.interface.new_socket("Color", in_out="INPUT", socket_type="NodeSocketColor")
    group.interface.new_socket("Alpha", in_out="INPUT", socket_type="NodeSocketFloat")
    group.interface.new_socket("Color", in_out="OUTPUT", socket_type="NodeSocketColor")
    nodes, links = group.nodes, group.links
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    split, join = nodes.new("ShaderNodeSeparateColor"), nodes.new("ShaderNodeCombineColor")
    links.new(g_in.outputs["Color"], split.inputs["Color"])
    links.new(join.outputs["Color"], g_out.inputs["Color"])

    def math(op: str, *inputs: Any) -> Any:
        node = nodes.new("ShaderNodeMath")
        node.operation = op
        for socket, value in zip(node.inputs, inputs):
            if isinstance(value, (int, float)):
                socket.default_value = float(value)
            else:
                links.new(value, socket)
        return node.outputs[0]

    def piecewise(x: Any, threshold: float, low: Any, high: Any) -> Any:
        below = math("LESS_THAN", x, threshold)  # 1 where x < threshold
        return math("MULTIPLY_ADD", below, math("SUBTRACT", low, high), high)  # high + below * (low - high)

    alpha = g_in.outputs["Alpha"]
    for i, channel in enumerate(("Red", "Green", "Blue")):
        c = split.outputs[channel]
        encoded = piecewise(c, 0.0031308, math("MULTIPLY", c, 12.92),
                            math("MULTIPLY_ADD", math("POWER", c, 1 / 2.4), 1.055, -0.055))
        mixed = math("MULTIPLY_ADD", alpha, math("SUBTRACT", encoded, 1.0), 1.0)  # a * e + (1 - a)
        decoded = piecewise(mixed, 0.04045, math("DIVIDE", mixed, 12.92),
                            math("POWER", math("MULTIPLY_ADD", mixed, 1 / 1.055, 0.055 / 1.055), 2.4))
        links.new(decoded, join.inputs[i])
    return group


def points_node_group(created: Created) -> Any:
    """Geometry nodes: vertices -> points of radius ``point_radius`` (attribute) with the modifier's material.

    Mesh to Points keeps the vertex attributes (``Color``, ``depth``), so the material reads the photo's colours.
    """
    group: Any = bpy.data.node_groups.get(POINTS_NODE_GROUP)
    if group is not None and group.bl_idname == "GeometryNodeTree":
        return group
    group = created.add(bpy.data.node_groups, bpy.data.node_groups.new(POINTS_NODE_GROUP, "GeometryNodeTree"))
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Material", in_out="INPUT", socket_type="NodeSocketMaterial")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    radius = nodes.new("GeometryNodeInputNamedAttribute")
    radius.data_type = "FLOAT"
    radius.inputs["Name"].default_value = "point_radius"
    set_material = nodes.new("GeometryNodeSetMaterial")
    links.new(g_in.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(radius.outputs["Attribute"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], set_material.inputs["Geometry"])
    links.new(g_in.outputs["Material"], set_material.inputs["Material"])
    links.new(set_material.outputs["Geometry"], g_out.inputs["Geometry"])
    return group


def material_input_identifier(group: Any) -> str:
    return next(item.identifier for item in group.interface.items_tree
                if getattr(item, "in_out", None) == "INPUT" and item.socket_type == "NodeSocketMaterial")


# ---------------------------------------------------------------------------------------------------------------
# The whole build


def build_depth_scene(
    context: Any,
    depth: np.ndarray,
    intrinsics: Any,
    *,
    name: str,
    image: Any | None = None,
    uncertainty: np.ndarray | None = None,
    options: BuildOptions = BuildOptions(),
    created: Created | None = None,
) -> BuildResult:
    """Build a collection ``name`` with the depth mesh (or points) and a camera that sees it as the photo did.

    ``intrinsics`` describe the photo (``image``) or, without one, the depth map. ``depth`` in metres, NaN where
    invalid. On any error every datablock made here (and in ``created``, when given) is removed and the error
    raised; the scene's camera and render size change only once everything else exists.
    """
    scene = context.scene
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise BuildError(f"depth must be an H x W map, got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise BuildError("the depth map has no valid pixel (all zero, negative or NaN)")
    if uncertainty is not None and np.shape(uncertainty) != depth.shape:
        raise BuildError(f"uncertainty shape {np.shape(uncertainty)} differs from the depth's {depth.shape}")
    hd, wd = int(depth.shape[0]), int(depth.shape[1])
    k_depth = intrinsics.scaled(wd, hd) if (intrinsics.width, intrinsics.height) != (wd, hd) else intrinsics
    unit = metres_per_unit(scene)
    gm = geometry.build_grid_mesh(
        depth, k_depth, stride=options.stride, faces=not options.point_cloud,
        max_relative_jump=None if options.point_cloud else options.max_relative_jump,
    )

    outer = created if created is not None else Created()
    try:
        with transaction() as made:
            mesh = made.add(bpy.data.meshes, bpy.data.meshes.new(name))
            fill_mesh(mesh, gm, unit)
            add_point_attribute(mesh, "depth", gm.depth)  # metres, whatever the unit scale
            if uncertainty is not None:
                add_point_attribute(mesh, "uncertainty", gm.vertex_values(uncertainty))
            if options.point_cloud or image is None:  # a photo on a mesh is shown through the UVs instead
                colours = mesh.color_attributes.new("Color", "FLOAT_COLOR", "POINT")
                colours.data.foreach_set("color", vertex_colours(gm, (hd, wd), image, depth).ravel())
                mesh.color_attributes.active_color = colours

            mat = made.add(bpy.data.materials, make_material(
                f"{name} material", image, options.shading, use_colour_attribute=options.point_cloud,
                created=made))
            mesh.materials.append(mat)

            cam_data = made.add(bpy.data.cameras, bpy.data.cameras.new(f"{name} camera"))
            settings = camera_settings(intrinsics)
            for key in ("sensor_fit", "sensor_width", "lens", "shift_x", "shift_y"):
                setattr(cam_data, key, settings[key])
            d_lo, d_hi = float(gm.depth.min()), float(gm.depth.max())
            cam_data.clip_start = max(min(0.01, 0.5 * d_lo), 1e-4) / unit
            cam_data.clip_end = max(100.0, 2.0 * d_hi) / unit
            cam_obj = made.add(bpy.data.objects, bpy.data.objects.new(f"{name} camera", cam_data))
            location = tuple(x / unit for x in options.location)
            cam_obj.matrix_world = camera_matrix_world(location)  # type: ignore[arg-type]

            obj = made.add(bpy.data.objects, bpy.data.objects.new(name, mesh))
            obj.matrix_world = cam_obj.matrix_world.copy()  # vertices are in camera space
            if options.point_cloud:
                add_point_attribute(
                    mesh, "point_radius",
                    options.point_size * 0.5 * options.stride * gm.depth / min(k_depth.fx, k_depth.fy) / unit,
                )
                modifier: Any = obj.modifiers.new("MetricGold points", "NODES")
                modifier.node_group = points_node_group(made)
                modifier[material_input_identifier(modifier.node_group)] = mat

            collection = made.add(bpy.data.collections, bpy.data.collections.new(name))
            collection.objects.link(cam_obj)
            collection.objects.link(obj)
            scene.collection.children.link(collection)

            # Last, and cannot fail half-way: the scene now looks through the new camera.
            if options.set_scene_camera:
                scene.camera = cam_obj
                apply_render_settings(scene, settings)
    except BaseException:
        outer.remove_all()
        raise
    return BuildResult(collection, obj, cam_obj, len(gm.vertices), len(gm.faces))
