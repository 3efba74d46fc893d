"""A depth *sequence* as one mesh that plays back with the timeline: Geometry Nodes read the depth frame of the
current scene frame from an image sequence and move a grid of camera rays to that depth.

The mesh holds, per vertex, the ray of its pixel at unit depth, ``((u - cx) / fx, -(v - cy) / fy, -1)`` in Blender
camera space (so the intrinsics are baked in once), and the texture coordinate of the pixel centre. The node group
(:data:`SEQUENCE_NODE_GROUP`) samples the depth image sequence there with the Image Texture node (closest texel,
``Frame`` = the file number of the current scene frame), stores it as the ``depth`` point attribute, sets
``position = ray * depth / unit scale`` (the unprojection of ``metricgold_engine.core.geometry.unproject``), deletes
vertices without valid depth (0, negative, NaN, or a missing file) and edges across a depth jump larger than
``Max Depth Jump`` (with their faces). Nothing is baked per frame.

Depth files must be float OpenEXR (what ``predict --format exr`` and ``trainer.synth`` write): Blender normalises
16-bit PNGs to [0, 1], and ``.npy`` is not an image. The image is marked Non-Color so its values are used as they are.
The photo texture is an image sequence or a movie, played through its Image Texture node's image user.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from . import mesh_builder
from .engine import geometry
from .mesh_builder import BuildError, Created, transaction

__all__ = [
    "SEQUENCE_NODE_GROUP",
    "NumberedFiles",
    "SequenceMeshResult",
    "build_sequence_mesh",
    "numbered_files",
    "sequence_node_group",
]

SEQUENCE_NODE_GROUP = "MetricGold Depth Sequence"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".webp", ".bmp")
MOVIE_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")
_NUMBER = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class NumberedFiles:
    """Files ``PREFIX + number + SUFFIX`` with consecutive numbers: what Blender loads as an image sequence."""

    paths: tuple[str, ...]
    first: int

    def __len__(self) -> int:
        return len(self.paths)


def numbered_files(path: str | os.PathLike[str], suffixes: tuple[str, ...]) -> NumberedFiles:
    """The numbered sequence a folder holds (or that a file of it belongs to), sorted by number.

    Raises BuildError naming the folder when it holds none, mixes several name patterns, or has a gap (Blender's
    image sequence finds each frame's file by its number, so the numbers must be consecutive).
    """
    p = Path(path)
    if not p.exists():
        raise BuildError(f"{p}: no such folder or file")
    folder = p if p.is_dir() else p.parent
    groups: dict[tuple[str, str, int], list[tuple[int, str]]] = {}
    for f in folder.iterdir():
        if f.name.startswith(".") or f.suffix.lower() not in suffixes or not f.is_file():
            continue
        m = _NUMBER.match(f.stem)
        if m:
            groups.setdefault((m.group(1), f.suffix, len(m.group(2))), []).append((int(m.group(2)), str(f)))
    if not p.is_dir() and p.is_file():  # the pattern of the given file
        m = _NUMBER.match(p.stem)
        if not m:
            raise BuildError(f"{p}: the file name has no frame number (e.g. depth_000001.exr)")
        key = (m.group(1), p.suffix, len(m.group(2)))
        groups = {key: groups.get(key, [])}
    if not groups or not any(groups.values()):
        raise BuildError(f"{folder}: no numbered {'/'.join(suffixes)} files (e.g. 000001{suffixes[0]})")
    if len(groups) > 1:
        names = ", ".join(f"{pre}{'#' * n}{suf}" for pre, suf, n in sorted(groups))
        raise BuildError(f"{folder}: several numbered sequences ({names}); pick one of its files")
    items = sorted(next(iter(groups.values())))
    numbers = [n for n, _ in items]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))[:5]
        raise BuildError(f"{folder}: the sequence has gaps (missing numbers {missing})")
    return NumberedFiles(tuple(path for _, path in items), numbers[0])


# ---------------------------------------------------------------------------------------------------------------
# Geometry nodes


def _interface_identifier(group: Any, name: str) -> str:
    return next(item.identifier for item in group.interface.items_tree
                if getattr(item, "in_out", None) == "INPUT" and item.name == name)


def _math(nodes: Any, links: Any, op: str, a: Any, b: Any = None, value: float | None = None) -> Any:
    node = nodes.new("ShaderNodeMath")
    node.operation = op
    links.new(a, node.inputs[0])
    if b is not None:
        links.new(b, node.inputs[1])
    elif value is not None:
        node.inputs[1].default_value = value
    return node.outputs[0]


def sequence_node_group(created: Created) -> Any:
    """The node group (made once per file, then reused): inputs Geometry, Depth (image sequence), First File,
    Start Frame, Frame Count, Unit Scale (1 / metres per Blender unit), Max Depth Jump (0 = keep all), Material."""
    group: Any = bpy.data.node_groups.get(SEQUENCE_NODE_GROUP)
    if group is not None and group.bl_idname == "GeometryNodeTree":
        return group
    group = created.add(bpy.data.node_groups, bpy.data.node_groups.new(SEQUENCE_NODE_GROUP, "GeometryNodeTree"))
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    iface.new_socket("Depth", in_out="INPUT", socket_type="NodeSocketImage")
    for name in ("First File", "Start Frame", "Frame Count"):
        iface.new_socket(name, in_out="INPUT", socket_type="NodeSocketInt")
    iface.new_socket("Unit Scale", in_out="INPUT", socket_type="NodeSocketFloat").default_value = 1.0
    iface.new_socket("Max Depth Jump", in_out="INPUT", socket_type="NodeSocketFloat").default_value = 0.05
    iface.new_socket("Material", in_out="INPUT", socket_type="NodeSocketMaterial")
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    g_in, g_out = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")

    # File number of the current frame: clamp(floor(frame) - start, 0, count - 1) + first (holds the ends).
    time = nodes.new("GeometryNodeInputSceneTime")
    offset = _math(nodes, links, "SUBTRACT", _math(nodes, links, "FLOOR", time.outputs["Frame"]),
                   g_in.outputs["Start Frame"])
    last = _math(nodes, links, "SUBTRACT", g_in.outputs["Frame Count"], value=1.0)
    offset = _math(nodes, links, "MAXIMUM", _math(nodes, links, "MINIMUM", offset, last), value=0.0)
    file_number = _math(nodes, links, "ADD", offset, g_in.outputs["First File"])

    tex = nodes.new("GeometryNodeImageTexture")
    tex.interpolation = "Closest"  # one texel per vertex: the depth of its own pixel
    tex.extension = "EXTEND"
    tc = nodes.new("GeometryNodeInputNamedAttribute")
    tc.data_type = "FLOAT_VECTOR"
    tc.inputs["Name"].default_value = "pixel_uv"
    links.new(g_in.outputs["Depth"], tex.inputs["Image"])
    links.new(tc.outputs["Attribute"], tex.inputs["Vector"])
    links.new(file_number, tex.inputs["Frame"])
    sep = nodes.new("FunctionNodeSeparateColor")
    links.new(tex.outputs["Color"], sep.inputs["Color"])

    store = nodes.new("GeometryNodeStoreNamedAttribute")
    store.data_type = "FLOAT"
    store.domain = "POINT"
    store.inputs["Name"].default_value = "depth"
    links.new(g_in.outputs["Geometry"], store.inputs["Geometry"])
    links.new(sep.outputs["Red"], store.inputs["Value"])

    depth = nodes.new("GeometryNodeInputNamedAttribute")
    depth.data_type = "FLOAT"
    depth.inputs["Name"].default_value = "depth"
    position = nodes.new("GeometryNodeInputPosition")
    scale = _math(nodes, links, "MULTIPLY", depth.outputs["Attribute"], g_in.outputs["Unit Scale"])
    scaled = nodes.new("ShaderNodeVectorMath")
    scaled.operation = "SCALE"
    links.new(position.outputs["Position"], scaled.inputs[0])
    links.new(scale, scaled.inputs["Scale"])
    set_pos = nodes.new("GeometryNodeSetPosition")
    links.new(store.outputs["Geometry"], set_pos.inputs["Geometry"])
    links.new(scaled.outputs["Vector"], set_pos.inputs["Position"])

    # Invalid depth (0, negative, NaN: NaN > 0 is false) -> the vertex goes, with its edges and faces.
    valid = nodes.new("FunctionNodeCompare")
    valid.data_type = "FLOAT"
    valid.operation = "GREATER_THAN"
    links.new(depth.outputs["Attribute"], valid.inputs["A"])
    valid.inputs["B"].default_value = 0.0
    invalid = nodes.new("FunctionNodeBooleanMath")
    invalid.operation = "NOT"
    links.new(valid.outputs["Result"], invalid.inputs[0])
    drop_points = nodes.new("GeometryNodeDeleteGeometry")
    drop_points.domain = "POINT"
    links.new(set_pos.outputs["Geometry"], drop_points.inputs["Geometry"])
    links.new(invalid.outputs["Boolean"], drop_points.inputs["Selection"])

    # Depth jumps: an edge whose end depths differ by more than Max Depth Jump of the nearer one is cut with its
    # faces (vertices stay). Camera-space z is -depth * unit scale, so the ratio of the z's is the depth ratio.
    ends = nodes.new("GeometryNodeInputMeshEdgeVertices")
    z1 = nodes.new("ShaderNodeSeparateXYZ")
    z2 = nodes.new("ShaderNodeSeparateXYZ")
    links.new(ends.outputs["Position 1"], z1.inputs[0])
    links.new(ends.outputs["Position 2"], z2.inputs[0])
    far = _math(nodes, links, "MINIMUM", z1.outputs["Z"], z2.outputs["Z"])  # most negative z = farther
    near = _math(nodes, links, "MAXIMUM", z1.outputs["Z"], z2.outputs["Z"])
    ratio = _math(nodes, links, "DIVIDE", far, near)
    limit = _math(nodes, links, "ADD", g_in.outputs["Max Depth Jump"], value=1.0)
    jump = nodes.new("FunctionNodeCompare")
    jump.data_type = "FLOAT"
    jump.operation = "GREATER_THAN"
    links.new(ratio, jump.inputs["A"])
    links.new(limit, jump.inputs["B"])
    enabled = nodes.new("FunctionNodeCompare")
    enabled.data_type = "FLOAT"
    enabled.operation = "GREATER_THAN"
    links.new(g_in.outputs["Max Depth Jump"], enabled.inputs["A"])
    enabled.inputs["B"].default_value = 0.0
    cut = nodes.new("FunctionNodeBooleanMath")
    cut.operation = "AND"
    links.new(jump.outputs["Result"], cut.inputs[0])
    links.new(enabled.outputs["Result"], cut.inputs[1])
    drop_edges = nodes.new("GeometryNodeDeleteGeometry")
    drop_edges.domain = "EDGE"
    drop_edges.mode = "EDGE_FACE"
    links.new(drop_points.outputs["Geometry"], drop_edges.inputs["Geometry"])
    links.new(cut.outputs["Boolean"], drop_edges.inputs["Selection"])

    set_material = nodes.new("GeometryNodeSetMaterial")
    links.new(drop_edges.outputs["Geometry"], set_material.inputs["Geometry"])
    links.new(g_in.outputs["Material"], set_material.inputs["Material"])
    links.new(set_material.outputs["Geometry"], g_out.inputs["Geometry"])
    for i, node in enumerate(nodes):  # a readable layout is not needed for evaluation; keep nodes apart anyway
        node.location = (200 * (i % 8), -200 * (i // 8))
    return group


# ---------------------------------------------------------------------------------------------------------------
# Images


def _existing_sequence(path: str, source: str) -> Any | None:
    """An image datablock already playing ``path`` as ``source`` (a second mesh of the same sequence shares it)."""
    target = os.path.normcase(os.path.abspath(path))
    for image in bpy.data.images:
        if image.source == source and image.filepath and os.path.normcase(
                os.path.abspath(bpy.path.abspath(image.filepath))) == target:
            return image
    return None


def _load_fresh(path: str, created: Created) -> Any:
    """A new image datablock for ``path`` (not one already in the file, whose source may have been changed)."""
    try:
        image: Any = bpy.data.images.load(path, check_existing=False)
    except RuntimeError as e:
        raise BuildError(f"{path}: Blender cannot read this image ({e})") from e
    created.add(bpy.data.images, image)
    if image.size[0] == 0 or image.size[1] == 0:
        raise BuildError(f"{path}: Blender cannot read this image (no pixels)")
    return image


def load_depth_sequence(files: NumberedFiles, created: Created) -> tuple[Any, int, int]:
    """The depth files as one Image datablock of source SEQUENCE, float and Non-Color; and its width, height."""
    first = files.paths[0]
    image = _existing_sequence(first, "SEQUENCE")
    if image is not None and image.colorspace_settings.is_data:
        w, h = image_file_size(first)
        return image, w, h
    image = _load_fresh(first, created)
    # Asked before the source changes, which unloads the pixels (size 0 until a frame is shown).
    if not image.is_float:
        raise BuildError(f"{first}: Blender did not load this EXR as float data")
    w, h = mesh_builder.image_size(image)
    image.source = "SEQUENCE"
    image.colorspace_settings.is_data = True  # the values as stored, no colour transform
    image.alpha_mode = "NONE"
    return image, w, h


def load_texture(path: str, created: Created) -> tuple[Any, int, int]:
    """The photo sequence (any numbered image) or movie as an Image datablock; returns it, the number of frames
    and the number of the first file (1 for a movie: its first frame)."""
    if path.lower().endswith(MOVIE_SUFFIXES):
        image = _existing_sequence(path, "MOVIE") or _load_fresh(path, created)
        image.source = "MOVIE"
        frames = int(image.frame_duration)
        if frames <= 0:
            raise BuildError(f"{path}: Blender cannot read frames from this movie")
        return image, frames, 1
    files = numbered_files(path, IMAGE_SUFFIXES)
    image = _existing_sequence(files.paths[0], "SEQUENCE") or _load_fresh(files.paths[0], created)
    image.source = "SEQUENCE"
    return image, len(files), files.first


def sequence_material(name: str, texture: Any | None, frames: int, first: int, start_frame: int,
                      shading: str) -> Any:
    """The photo played as the mesh's texture: image user frame ``start_frame`` shows file ``first``."""
    mat = mesh_builder.make_material(name, texture, shading, use_colour_attribute=texture is None)
    if texture is not None:
        tex = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
        user = tex.image_user
        user.frame_duration = frames
        user.frame_start = start_frame
        user.frame_offset = first - 1  # Blender shows file (frame - frame_start + 1 + offset)
        user.use_cyclic = False
        user.use_auto_refresh = True
    return mat


# ---------------------------------------------------------------------------------------------------------------
# The build


@dataclass
class SequenceMeshResult:
    collection: Any
    object: Any
    camera: Any
    vertex_count: int
    frame_count: int
    frame_start: int


def build_sequence_mesh(
    context: Any,
    depth_path: str | os.PathLike[str],
    intrinsics: Any,
    *,
    name: str,
    texture_path: str | os.PathLike[str] | None = None,
    stride: int = 1,
    max_relative_jump: float | None = 0.05,
    shading: str = "EMISSION",
    start_frame: int | None = None,
    set_scene_camera: bool = True,
    location: tuple[float, float, float] = (0.0, 0.0, 0.0),
    created: Created | None = None,
) -> SequenceMeshResult:
    """Build a collection ``name`` with the sequence mesh (one object, a Geometry Nodes modifier) and its camera.

    ``depth_path`` is the folder of numbered depth EXRs or one of them; ``intrinsics`` describe the photo or depth
    (rescaled to the depth's size); ``start_frame`` is the scene frame showing the first depth file (default: the
    scene's start). With ``set_scene_camera`` the scene looks through the new camera, its render size follows the
    intrinsics and its frame range covers the sequence. On error everything made here is removed.
    """
    scene = context.scene
    if Path(depth_path).is_file() and Path(depth_path).suffix.lower() != ".exr":
        raise BuildError(f"{depth_path}: a depth sequence must be float OpenEXR files (.exr); Blender normalises "
                         "16-bit PNGs and cannot read .npy as an image")
    files = numbered_files(depth_path, (".exr",))
    start = int(scene.frame_start if start_frame is None else start_frame)
    unit = mesh_builder.metres_per_unit(scene)
    outer = created if created is not None else Created()
    try:
        with transaction() as made:
            depth_image, wd, hd = load_depth_sequence(files, made)
            if not geometry.same_aspect(intrinsics.width, intrinsics.height, (hd, wd)):
                raise BuildError(f"{files.paths[0]} is {wd} x {hd} but the camera is {intrinsics.width} x "
                                 f"{intrinsics.height}: different aspect ratios")
            k_depth = intrinsics.scaled(wd, hd) if (intrinsics.width, intrinsics.height) != (wd, hd) else intrinsics
            # The rays: the unprojection at unit depth (max_relative_jump None: constant depth has no jumps).
            gm = geometry.build_grid_mesh(np.ones((hd, wd)), k_depth, stride=stride)
            mesh = made.add(bpy.data.meshes, bpy.data.meshes.new(name))
            mesh_builder.fill_mesh(mesh, gm, 1.0)
            uv = mesh.attributes.new("pixel_uv", "FLOAT_VECTOR", "POINT")
            uv.data.foreach_set("vector", np.concatenate(
                [gm.uvs, np.zeros((len(gm.uvs), 1))], axis=1).astype(np.float32).ravel())

            texture, tex_frames, tex_first = (None, 0, 0)
            if texture_path:
                texture, tex_frames, tex_first = load_texture(os.fspath(texture_path), made)
            mat = made.add(bpy.data.materials, sequence_material(
                f"{name} material", texture, tex_frames, tex_first, start, shading))
            mesh.materials.append(mat)

            cam_data = made.add(bpy.data.cameras, bpy.data.cameras.new(f"{name} camera"))
            settings = mesh_builder.camera_settings(intrinsics)
            for key in ("sensor_fit", "sensor_width", "lens", "shift_x", "shift_y"):
                setattr(cam_data, key, settings[key])
            cam_data.clip_start = 0.01 / unit
            cam_data.clip_end = 1000.0 / unit
            cam_obj = made.add(bpy.data.objects, bpy.data.objects.new(f"{name} camera", cam_data))
            x, y, z = (float(c) / unit for c in location)
            cam_obj.matrix_world = mesh_builder.camera_matrix_world((x, y, z))

            obj = made.add(bpy.data.objects, bpy.data.objects.new(name, mesh))
            obj.matrix_world = cam_obj.matrix_world.copy()  # the grid is in camera space
            modifier: Any = obj.modifiers.new("MetricGold depth sequence", "NODES")
            group = sequence_node_group(made)
            modifier.node_group = group
            values = {"Depth": depth_image, "First File": files.first, "Start Frame": start,
                      "Frame Count": len(files), "Unit Scale": 1.0 / unit,
                      "Max Depth Jump": float(max_relative_jump or 0.0), "Material": mat}
            for key, value in values.items():
                modifier[_interface_identifier(group, key)] = value

            collection = made.add(bpy.data.collections, bpy.data.collections.new(name))
            collection.objects.link(cam_obj)
            collection.objects.link(obj)
            scene.collection.children.link(collection)
            if set_scene_camera:
                scene.camera = cam_obj
                mesh_builder.apply_render_settings(scene, settings)
                scene.frame_start, scene.frame_end = start, start + len(files) - 1
    except BaseException:
        outer.remove_all()
        raise
    return SequenceMeshResult(collection, obj, cam_obj, len(gm.vertices), len(files), start)


# ---------------------------------------------------------------------------------------------------------------
# Camera file and the operator


def read_camera_file(path: str | os.PathLike[str]) -> Any:
    """Intrinsics from a sequence camera file: ``{"width", "height", "intrinsics": {"fx", "fy", "cx", "cy"}}``
    (``trainer.synth --sequence`` writes ``camera.json`` so) or the same keys at the top level."""
    import json

    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
        k = rec.get("intrinsics", rec)
        return geometry.Intrinsics(float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]),
                                   int(rec.get("width", k.get("width"))), int(rec.get("height", k.get("height"))))
    except FileNotFoundError:
        raise BuildError(f"{path}: camera file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise BuildError(f"{path}: not a camera file with width, height and fx, fy, cx, cy ({e})") from e


def depth_files_of_camera_file(path: str | os.PathLike[str]) -> Path:
    """The first depth file a sequence camera file names (``depth_files``, ``#`` = digits, from ``first_frame``):
    the engine's ``NAME_camera.json`` (docs/sequences.md) and a synthetic sequence's ``camera.json`` do."""
    import json

    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
        pattern, first = str(rec["depth_files"]), int(rec.get("first_frame", 1))
    except FileNotFoundError:
        raise BuildError(f"{path}: camera file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise BuildError(f"{path}: no depth_files in this camera file ({e})") from e
    m = re.search(r"#+", pattern)
    if m is None:
        raise BuildError(f"{path}: depth_files {pattern!r} has no #### frame number")
    return Path(path).parent / (pattern[: m.start()] + f"{first:0{len(m.group(0))}d}" + pattern[m.end():])


def image_file_size(path: str) -> tuple[int, int]:
    """Width and height of an image file, read through Blender (the datablock is removed again)."""
    made = Created()
    image = _load_fresh(path, made)
    try:
        return mesh_builder.image_size(image)
    finally:
        made.remove_all()


def sequence_name(depth_path: str) -> str:
    """``clip`` for ``out/clip_depth_000001.exr`` or a folder ``clip_depth/``; the folder's name otherwise."""
    p = Path(depth_path.rstrip("/\\"))
    if p.is_dir():
        stem = p.name
    else:
        m = _NUMBER.match(p.stem)
        stem = m.group(1) if m else p.stem
    stem = re.sub(r"[_\-. ]*depth[_\-. ]*$", "", stem).strip("_-. ")
    return stem or (p.name if p.is_dir() else p.parent.name) or "depth sequence"


def _operator_base() -> tuple[type, ...]:
    from .operators import GeometryOptions  # the shared camera/stride/jump/material options

    return (GeometryOptions, bpy.types.Operator)


class METRICGOLD_OT_depth_sequence_to_mesh(*_operator_base()):  # type: ignore[misc]
    """One mesh that plays a depth sequence (numbered EXRs) with the timeline, through Geometry Nodes, textured
    with the photo sequence or movie"""

    bl_idname = "metricgold.depth_sequence_to_mesh"
    bl_label = "Depth Sequence to Mesh"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Depth Sequence", description="One of the numbered depth EXRs, their folder, or the sequence's camera "
        "file (NAME_camera.json)", subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_glob: bpy.props.StringProperty(default="*.exr;*.json", options={"HIDDEN"})  # type: ignore[valid-type]
    texture_path: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Photos / Movie", description="One of the numbered photos (or their folder), or a movie file",
        subtype="FILE_PATH", options={"SKIP_SAVE"})
    camera_file: bpy.props.StringProperty(  # type: ignore[valid-type]
        name="Camera File", description="Optional JSON with width, height, fx, fy, cx, cy (overrides Camera)",
        subtype="FILE_PATH", options={"SKIP_SAVE"})
    start_frame: bpy.props.IntProperty(  # type: ignore[valid-type]
        name="Start Frame", description="Scene frame that shows the first depth file", default=1)

    def invoke(self, context: Any, event: Any) -> set[str]:
        if self.filepath:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: Any) -> set[str]:
        try:
            depth_path = bpy.path.abspath(self.filepath)
            texture = bpy.path.abspath(self.texture_path) if self.texture_path else None
            camera_file = bpy.path.abspath(self.camera_file) if self.camera_file else None
            if depth_path.lower().endswith(".json"):  # a sequence camera file: the depth files it names
                camera_file = camera_file or depth_path
                depth_path = str(depth_files_of_camera_file(depth_path))
            if camera_file:
                k, source = read_camera_file(camera_file), "the camera file"
            else:
                size_from = texture if texture and not texture.lower().endswith(MOVIE_SUFFIXES) else None
                first = (numbered_files(size_from, IMAGE_SUFFIXES) if size_from else
                         numbered_files(depth_path, (".exr",))).paths[0]
                width, height = image_file_size(first)
                k, source = self.resolve_intrinsics(width, height, first if size_from else None)
            result = build_sequence_mesh(
                context, depth_path, k, name=sequence_name(depth_path),
                texture_path=texture, stride=self.stride,
                max_relative_jump=self.max_relative_jump if self.cut_discontinuities else None,
                shading=self.shading, start_frame=self.start_frame, location=tuple(self.location))
        except (BuildError, ValueError) as e:
            self.report({"ERROR"}, f"MetricGold: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"MetricGold: {result.object.name}: {result.frame_count} frames from scene frame "
                    f"{result.frame_start}, {result.vertex_count} vertices, camera from {source}")
        return {"FINISHED"}

    def draw(self, context: Any) -> None:
        col = self.layout.column()
        for prop in ("texture_path", "camera_file", "start_frame", "intrinsics_mode"):
            col.prop(self, prop)
        if self.intrinsics_mode == "FOV":
            col.prop(self, "fov")
        elif self.intrinsics_mode == "INTRINSICS":
            for prop in ("fx", "fy", "cx", "cy"):
                col.prop(self, prop)
        for prop in ("stride", "cut_discontinuities", "max_relative_jump", "shading"):
            col.prop(self, prop)


classes = (METRICGOLD_OT_depth_sequence_to_mesh,)
