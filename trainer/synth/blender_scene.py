"""Build a :class:`~trainer.synth.scenes.SceneSpec` in Blender and render it with Cycles (bpy as a module).

Everything that touches bpy lives here. The render gives two things per frame:

- the Combined pass through Blender's own colour management (AgX view transform, sRGB display), saved as an 8-bit
  RGB PNG with ``Image.save_render``;
- the Depth (Z) pass, which Cycles writes as *planar* depth (distance along the camera's view axis, measured at
  the pixel centre) in metres; the tests check this against ray-plane geometry to 1 mm. Pixels that see no
  geometry (the sky) come out as 1e10 and are turned into 0 = invalid here.

The Z pass is read by saving the render result as a multilayer OpenEXR (float32) and reading its ``Depth.Z``
channel with the OpenEXR package, which needs no compositor set-up (the compositor API changed in Blender 4/5).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import bpy  # type: ignore[import-not-found]
import bmesh  # type: ignore[import-not-found]
import mathutils  # type: ignore[import-not-found]
import numpy as np
from PIL import Image

from .scenes import MESH_SUFFIXES, LightSpec, MaterialSpec, SceneSpec, WorldSpec

__all__ = [
    "DENOISE_MODES",
    "MESH_SUFFIXES",
    "RenderSettings",
    "build_scene",
    "configure_render",
    "render_frame",
    "reset_scene",
    "select_device",
]

#: Depth beyond this is "no surface": Cycles writes 1e10 where a camera ray hits nothing.
_NO_HIT_DEPTH = 1e9

#: OpenImageDenoise settings (quality, input passes, prefilter). At 256x192 on 2 CPU cores with 8 samples:
#: "fast" (colour only) adds almost nothing to the ~0.6 s render, "high" more than doubles it.
DENOISE_MODES: dict[str, tuple[str, str, str] | None] = {
    "off": None,
    "fast": ("FAST", "RGB", "NONE"),
    "balanced": ("BALANCED", "RGB_ALBEDO", "FAST"),
    "high": ("HIGH", "RGB_ALBEDO_NORMAL", "ACCURATE"),
}

_TEXTURE_NODES = {
    "noise": ("ShaderNodeTexNoise", "Fac"),
    "checker": ("ShaderNodeTexChecker", "Fac"),
    "brick": ("ShaderNodeTexBrick", "Fac"),
    "voronoi": ("ShaderNodeTexVoronoi", "Distance"),
    "wave": ("ShaderNodeTexWave", "Fac"),
    "magic": ("ShaderNodeTexMagic", "Fac"),
}


class RenderSettings:
    """Cycles settings of a run: resolution, samples, denoising and device."""

    def __init__(
        self,
        width: int,
        height: int,
        samples: int = 8,
        denoise: str = "fast",
        device: str = "auto",
        threads: int = 0,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"resolution must be positive, got {width}x{height}")
        if samples <= 0:
            raise ValueError(f"samples must be positive, got {samples}")
        if denoise not in DENOISE_MODES:
            raise ValueError(f"denoise must be one of {', '.join(DENOISE_MODES)}, got {denoise!r}")
        if device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be auto, cpu or gpu, got {device!r}")
        self.width, self.height, self.samples = int(width), int(height), int(samples)
        self.denoise, self.device, self.threads = denoise, device, int(threads)


# --------------------------------------------------------------------------------------------------------------------
# Scene reset and render configuration


def reset_scene() -> Any:
    """Remove every object, mesh, material, light, camera, world and image, so that a frame never depends on the
    frames rendered before it in the same process."""
    data: Any = bpy.data
    colls: tuple[Any, ...] = (data.objects, data.meshes, data.materials, data.lights, data.cameras, data.worlds, data.images,
                              data.textures, data.node_groups, data.collections)
    for coll in colls:
        ids = [i for i in coll if not (coll is data.images and i.type == "RENDER_RESULT")]
        if ids:
            data.batch_remove(ids)
    scene: Any = bpy.context.scene
    return scene


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level stdout: probing GPU back-ends makes Cycles log a warning line per missing driver."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def select_device(device: str) -> str:
    """Point Cycles at a GPU when one is usable (``auto``/``gpu``) and return ``"GPU"`` or ``"CPU"``."""
    with _quiet_stdout():
        if device == "cpu":
            # Initialise Cycles' device list now, quietly, rather than with log lines at the first render.
            prefs: Any = bpy.context.preferences.addons["cycles"].preferences  # type: ignore[union-attr]
            prefs.refresh_devices()
            return "CPU"
        return _select_gpu(device)


def _select_gpu(device: str) -> str:
    prefs: Any = bpy.context.preferences.addons["cycles"].preferences  # type: ignore[union-attr]
    for backend in ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"):
        try:
            prefs.compute_device_type = backend
        except TypeError:
            continue  # backend not compiled into this build
        prefs.refresh_devices()
        gpus = [d for d in prefs.devices if d.type == backend]
        if gpus:
            for d in prefs.devices:
                d.use = d.type == backend
            return "GPU"
    if device == "gpu":
        raise RuntimeError("--device gpu: Cycles found no usable GPU (tried OptiX, CUDA, HIP, oneAPI, Metal)")
    return "CPU"


def configure_render(scene: Any, settings: RenderSettings, device_type: str) -> None:
    """Cycles with few samples and short light paths: thousands of frames an hour on a few CPU cores."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = device_type
    scene.cycles.samples = settings.samples
    scene.cycles.use_adaptive_sampling = True
    scene.cycles.adaptive_threshold = 0.05
    scene.cycles.use_denoising = settings.denoise != "off"
    if settings.denoise != "off":
        mode = DENOISE_MODES[settings.denoise]
        assert mode is not None
        quality, passes, prefilter = mode
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
        scene.cycles.denoising_quality = quality
        scene.cycles.denoising_input_passes = passes
        scene.cycles.denoising_prefilter = prefilter
    scene.cycles.use_animated_seed = False
    scene.cycles.max_bounces = 4
    scene.cycles.diffuse_bounces = 2
    scene.cycles.glossy_bounces = 2
    scene.cycles.transmission_bounces = 0
    scene.cycles.transparent_max_bounces = 2
    scene.cycles.caustics_reflective = False
    scene.cycles.caustics_refractive = False
    scene.cycles.sample_clamp_indirect = 10.0
    scene.render.resolution_x = settings.width
    scene.render.resolution_y = settings.height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    scene.render.film_transparent = False
    # No render metadata (date, render time, ...) in the PNG: a re-rendered frame differs only if its pixels do.
    for prop in scene.render.bl_rna.properties:
        if prop.identifier.startswith("use_stamp") and not prop.is_readonly:
            setattr(scene.render, prop.identifier, False)
    scene.render.use_persistent_data = False
    if settings.threads > 0:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = settings.threads
    else:
        scene.render.threads_mode = "AUTO"
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.look = "None"
    scene.view_settings.gamma = 1.0
    scene.display_settings.display_device = "sRGB"
    scene.view_layers[0].use_pass_combined = True
    scene.view_layers[0].use_pass_z = True


# --------------------------------------------------------------------------------------------------------------------
# Geometry


def _torus(bm: Any, major: float = 0.7, minor: float = 0.3, n_major: int = 32, n_minor: int = 12) -> None:
    """A torus in the XY plane (bmesh has no torus operator); outer radius major + minor = 1."""
    verts = []
    for i in range(n_major):
        a = 2 * math.pi * i / n_major
        for j in range(n_minor):
            b = 2 * math.pi * j / n_minor
            r = major + minor * math.cos(b)
            verts.append(bm.verts.new((r * math.cos(a), r * math.sin(a), minor * math.sin(b))))
    for i in range(n_major):
        for j in range(n_minor):
            i2, j2 = (i + 1) % n_major, (j + 1) % n_minor
            bm.faces.new((verts[i * n_minor + j], verts[i2 * n_minor + j], verts[i2 * n_minor + j2],
                          verts[i * n_minor + j2]))


def _primitive_mesh(kind: str) -> Any:
    """A unit-sized built-in shape (half-extent 1 on every axis), smooth-shaded where it is curved."""
    bm = bmesh.new()
    smooth = True
    if kind == "cube":
        bmesh.ops.create_cube(bm, size=2.0)
        smooth = False
    elif kind == "uv_sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=32, v_segments=16, radius=1.0)
    elif kind == "ico_sphere":
        bmesh.ops.create_icosphere(bm, subdivisions=2, radius=1.0)
        smooth = False
    elif kind == "cylinder":
        bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=32, radius1=1.0, radius2=1.0, depth=2.0)
    elif kind == "cone":
        bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=32, radius1=1.0, radius2=0.0, depth=2.0)
    elif kind == "torus":
        _torus(bm)
    elif kind == "monkey":
        bmesh.ops.create_monkey(bm)
        # Suzanne faces -Y once stood up; rotate so her "up" is +Z like the other shapes.
        bmesh.ops.rotate(bm, verts=list(bm.verts), cent=(0, 0, 0), matrix=mathutils.Matrix.Rotation(math.radians(90), 3, "X"))
        _normalize_bmesh(bm)
    else:
        bm.free()
        raise ValueError(f"unknown shape kind {kind!r}")
    mesh = bpy.data.meshes.new(kind)
    bm.to_mesh(mesh)
    bm.free()
    mesh.materials.append(None)  # one slot, filled per object
    if smooth:
        mesh.shade_smooth()
    return mesh


def _normalize_bmesh(bm: Any) -> None:
    """Centre ``bm`` on its bounding box and scale it uniformly so its largest half-extent is 1."""
    co = np.array([v.co[:] for v in bm.verts], dtype=np.float64)
    if co.size == 0:
        raise ValueError("the mesh has no vertices")
    lo, hi = co.min(axis=0), co.max(axis=0)
    half = float((hi - lo).max()) / 2.0
    if half <= 0:
        raise ValueError("the mesh has zero size")
    center = (lo + hi) / 2.0
    for v in bm.verts:
        v.co = [(float(c) - m) / half for c, m in zip(tuple(v.co), center)]


def import_mesh_file(path: str | os.PathLike[str]) -> Any:
    """Read a mesh file with Blender's importer, join its meshes and normalise them to the unit cube."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mesh file not found")
    before = set(bpy.data.objects)
    if suffix == ".obj":
        bpy.ops.wm.obj_import(filepath=str(path))
    elif suffix == ".ply":
        bpy.ops.wm.ply_import(filepath=str(path))
    elif suffix == ".stl":
        bpy.ops.wm.stl_import(filepath=str(path))
    elif suffix in (".glb", ".gltf"):
        bpy.ops.import_scene.gltf(filepath=str(path))
    else:
        raise ValueError(f"{path}: unsupported mesh format {suffix!r}; expected one of {', '.join(MESH_SUFFIXES)}")
    new: list[Any] = [o for o in bpy.data.objects if o not in before]
    bm = bmesh.new()
    for obj in new:
        if obj.type == "MESH":
            tmp: Any = obj.data.copy()
            tmp.transform(obj.matrix_world)  # bake the importer's axis conversion and placement
            bm.from_mesh(tmp)
            bpy.data.meshes.remove(tmp)
    imported_meshes: set[Any] = {o.data for o in new if o.type == "MESH"}
    bpy.data.batch_remove(new)
    bpy.data.batch_remove([m for m in imported_meshes if m.users == 0])
    if not bm.verts:
        bm.free()
        raise ValueError(f"{path}: the file holds no mesh geometry")
    _normalize_bmesh(bm)
    mesh = bpy.data.meshes.new(path.stem)
    bm.to_mesh(mesh)
    bm.free()
    mesh.materials.append(None)  # one slot, filled per object
    return mesh


# --------------------------------------------------------------------------------------------------------------------
# Materials, lights, world


def _socket(sockets: Any, identifier: str) -> Any:
    """A socket by identifier: the Mix node has several inputs *named* "A" (float, vector, colour, ...)."""
    for sock in sockets:
        if sock.identifier == identifier:
            return sock
    raise KeyError(identifier)


def _material(spec: MaterialSpec, name: str) -> Any:
    """Principled BSDF; base colour = mix(color_a, color_b, texture factor) in world-space metres."""
    mat: Any = bpy.data.materials.new(name)
    nt: Any = mat.node_tree
    bsdf = nt.nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = spec.roughness
    bsdf.inputs["Metallic"].default_value = spec.metallic
    if spec.texture == "plain":
        bsdf.inputs["Base Color"].default_value = (*spec.color_a, 1.0)
        return mat
    if spec.texture not in _TEXTURE_NODES:
        raise ValueError(f"unknown texture {spec.texture!r}")
    node_type, output = _TEXTURE_NODES[spec.texture]
    geo = nt.nodes.new("ShaderNodeNewGeometry")
    tex = nt.nodes.new(node_type)
    tex.inputs["Scale"].default_value = spec.scale
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    _socket(mix.inputs, "A_Color").default_value = (*spec.color_a, 1.0)
    _socket(mix.inputs, "B_Color").default_value = (*spec.color_b, 1.0)
    # Texture in world space: patterns keep their size in metres whatever the object's scale.
    nt.links.new(geo.outputs["Position"], tex.inputs["Vector"])
    nt.links.new(tex.outputs[output], _socket(mix.inputs, "Factor_Float"))
    nt.links.new(_socket(mix.outputs, "Result_Color"), bsdf.inputs["Base Color"])
    return mat


def _light(spec: LightSpec, name: str) -> Any:
    data: Any = bpy.data.lights.new(name, spec.kind)  # type: ignore[arg-type]
    data.energy = spec.energy
    data.color = spec.color
    if spec.kind == "AREA":
        data.size = spec.size
    elif spec.kind == "POINT":
        data.shadow_soft_size = spec.size
    elif spec.kind == "SUN":
        data.angle = spec.size
    obj = bpy.data.objects.new(name, data)
    obj.location = spec.location
    obj.rotation_euler = spec.rotation
    return obj


def _world(spec: WorldSpec) -> Any:
    """A sky gradient by view direction: horizon colour at and below the horizon, zenith colour straight up."""
    world: Any = bpy.data.worlds.new("world")
    nt: Any = world.node_tree
    bg = nt.nodes["Background"]
    bg.inputs["Strength"].default_value = spec.strength
    coord = nt.nodes.new("ShaderNodeTexCoord")
    sep = nt.nodes.new("ShaderNodeSeparateXYZ")
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.clamp_factor = True
    _socket(mix.inputs, "A_Color").default_value = (*spec.horizon, 1.0)
    _socket(mix.inputs, "B_Color").default_value = (*spec.zenith, 1.0)
    nt.links.new(coord.outputs["Generated"], sep.inputs["Vector"])  # the world's "Generated" = view direction
    nt.links.new(sep.outputs["Z"], _socket(mix.inputs, "Factor_Float"))
    nt.links.new(_socket(mix.outputs, "Result_Color"), bg.inputs["Color"])
    if spec.horizon != spec.zenith:
        # Cycles builds an importance map of a non-constant sky; the automatic 1024-pixel map costs about a second
        # per frame on 2 cores, a 64-pixel one nothing, and a smooth gradient needs no more.
        world.cycles.sampling_method = "MANUAL"
        world.cycles.sample_map_resolution = 64
    return world


# --------------------------------------------------------------------------------------------------------------------
# Scene


def build_scene(spec: SceneSpec, settings: RenderSettings, device_type: str = "CPU") -> Any:
    """Reset the current scene and build ``spec`` in it, ready to render."""
    scene = reset_scene()
    configure_render(scene, settings, device_type)
    scene.cycles.seed = spec.cycles_seed
    scene.view_settings.exposure = spec.exposure
    scene.world = _world(spec.world)

    cam_data: Any = bpy.data.cameras.new("camera")
    cam_data.type = "PERSP"
    cam_data.lens = spec.camera.lens_mm
    cam_data.sensor_fit = "HORIZONTAL"  # the sampled field of view is horizontal whatever the aspect ratio
    cam_data.sensor_width = spec.camera.sensor_width_mm
    cam_data.shift_x = cam_data.shift_y = 0.0
    cam_data.clip_start = spec.camera.clip_start
    cam_data.clip_end = spec.camera.clip_end
    cam = bpy.data.objects.new("camera", cam_data)
    cam.location = spec.camera.location
    cam.rotation_mode = "XYZ"
    cam.rotation_euler = spec.camera.rotation
    scene.collection.objects.link(cam)
    scene.camera = cam

    meshes: dict[str, Any] = {}  # one mesh data-block per shape kind / file, shared by its objects
    for i, shape in enumerate(spec.shapes):
        key = shape.mesh_path if shape.kind == "mesh_file" else shape.kind
        if key is None:
            raise ValueError(f"shape {shape.name!r}: kind mesh_file needs a mesh_path")
        if key not in meshes:
            meshes[key] = import_mesh_file(key) if shape.kind == "mesh_file" else _primitive_mesh(shape.kind)
        obj = bpy.data.objects.new(f"{shape.name}", meshes[key])
        obj.location = shape.location
        obj.rotation_euler = shape.rotation
        obj.scale = shape.scale
        # The mesh is shared, so the material goes on the object's slot (link OBJECT), not on the mesh.
        obj.material_slots[0].link = "OBJECT"
        obj.material_slots[0].material = _material(shape.material, f"mat{i}")
        scene.collection.objects.link(obj)
    for i, light in enumerate(spec.lights):
        scene.collection.objects.link(_light(light, f"light{i}"))
    return scene


# --------------------------------------------------------------------------------------------------------------------
# Render


def _read_exr_depth(path: Path) -> np.ndarray:
    import OpenEXR  # type: ignore[import-not-found]  # no stubs

    with OpenEXR.File(str(path)) as f:
        for part in f.parts:
            for name, channel in part.channels.items():
                if name.endswith("Depth.Z") or name == "Depth.Z":
                    return np.array(channel.pixels, dtype=np.float32)
    raise RuntimeError(f"{path}: the render has no Depth.Z channel (is the Z pass enabled?)")


def render_frame(scene: Any, rgb_path: str | os.PathLike[str], scratch_dir: str | os.PathLike[str]) -> np.ndarray:
    """Render ``scene``; save the colour-managed image as an 8-bit RGB PNG at ``rgb_path`` (exactly that path,
    which the caller makes a temporary one) and return planar depth in metres (float32 H x W, 0 = no surface)."""
    status = bpy.ops.render.render(write_still=False, scene=scene.name)
    if "FINISHED" not in status:
        raise RuntimeError(f"Blender's render did not finish ({', '.join(sorted(status))}); see Blender's log above")
    result: Any = bpy.data.images["Render Result"]
    fmt = scene.render.image_settings
    fd, exr_name = tempfile.mkstemp(dir=scratch_dir, prefix=".zpass.", suffix=".exr")
    os.close(fd)
    try:
        fmt.media_type = "MULTI_LAYER_IMAGE"
        fmt.file_format = "OPEN_EXR_MULTILAYER"
        fmt.color_depth = "32"
        fmt.exr_codec = "NONE"  # a scratch file, read back at once
        result.save_render(exr_name, scene=scene)
        depth = _read_exr_depth(Path(exr_name))
    finally:
        Path(exr_name).unlink(missing_ok=True)
    fmt.media_type = "IMAGE"
    fmt.file_format = "PNG"
    fmt.color_mode = "RGB"
    fmt.color_depth = "8"
    fmt.compression = 15
    fd, png_name = tempfile.mkstemp(dir=scratch_dir, prefix=".combined.", suffix=".png")
    os.close(fd)
    try:
        result.save_render(png_name, scene=scene)  # Blender's colour management (view transform, exposure)
        # Re-encode without Blender's metadata (Cycles adds render times), which differs from render to render.
        with Image.open(png_name) as im:
            im.convert("RGB").save(rgb_path, format="PNG", compress_level=6)
    finally:
        Path(png_name).unlink(missing_ok=True)
    with np.errstate(invalid="ignore"):
        no_surface = ~np.isfinite(depth) | (depth >= _NO_HIT_DEPTH) | (depth <= 0)
    depth[no_surface] = 0.0
    return depth
