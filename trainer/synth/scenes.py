"""Procedural scene descriptions: what to build, drawn from a seeded random generator, with no bpy.

A :class:`SceneSpec` is plain data (shapes, materials, lights, world, camera); :mod:`trainer.synth.blender_scene`
turns it into a Blender scene. Keeping the sampling pure makes a frame reproducible from ``(seed, index)`` alone
and lets the tests check the sampler without rendering.

Units are metres, Blender world axes (Z up). Three kinds of scene cover the metric range the model must learn:

- ``tabletop``: objects on a table in front of a wall, depths of about 0.3 to 3 m;
- ``room``: a closed room with furniture made of primitives, about 0.5 to 10 m;
- ``street``: a road between buildings with cars, poles and trees under a sky, about 2 to 80 m (the sky has no
  depth and comes out invalid).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .camera import lens_from_horizontal_fov

__all__ = [
    "MESH_SUFFIXES",
    "SCENE_KINDS",
    "TEXTURE_KINDS",
    "SHAPE_KINDS",
    "CameraSpec",
    "LightSpec",
    "MaterialSpec",
    "SceneSpec",
    "ShapeSpec",
    "WorldSpec",
    "frame_rng",
    "mesh_files_in",
    "sample_scene",
]

SCENE_KINDS: tuple[str, ...] = ("tabletop", "room", "street")
#: Mesh files ``--mesh-dir`` may hold (read with Blender's own importers).
MESH_SUFFIXES: tuple[str, ...] = (".obj", ".ply", ".stl", ".glb", ".gltf")
#: Default mix: rooms and streets dominate, as in the reference recipe's indoor/outdoor mix.
DEFAULT_KIND_WEIGHTS: dict[str, float] = {"tabletop": 0.2, "room": 0.5, "street": 0.3}
#: Procedural textures that modulate the base colour, so that colour alone never tells depth.
TEXTURE_KINDS: tuple[str, ...] = ("plain", "noise", "checker", "brick", "voronoi", "wave", "magic")
#: Built-in shapes (unit size: a cube of half-size 1, spheres of radius 1, ...) plus meshes read from files.
SHAPE_KINDS: tuple[str, ...] = ("cube", "uv_sphere", "ico_sphere", "cylinder", "cone", "torus", "monkey", "mesh_file")

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class MaterialSpec:
    """A Principled BSDF whose base colour mixes ``color_a`` and ``color_b`` by a procedural texture."""

    texture: str
    color_a: Vec3
    color_b: Vec3
    scale: float  # texture frequency per metre (object space)
    roughness: float
    metallic: float = 0.0


@dataclass(frozen=True)
class ShapeSpec:
    """One object: a built-in ``kind`` (see :data:`SHAPE_KINDS`) scaled per axis, rotated (XYZ Euler) and placed."""

    kind: str
    location: Vec3
    rotation: Vec3
    scale: Vec3
    material: MaterialSpec
    mesh_path: str | None = None  # for kind == "mesh_file": normalised to fit the unit cube before scaling
    name: str = "shape"


@dataclass(frozen=True)
class LightSpec:
    kind: str  # "SUN", "AREA" or "POINT"
    location: Vec3
    rotation: Vec3
    energy: float  # W for AREA/POINT, W/m^2 (strength) for SUN
    color: Vec3
    size: float  # area light side / point radius (m), sun angular diameter (rad)


@dataclass(frozen=True)
class WorldSpec:
    """Environment light: a vertical gradient from ``horizon`` to ``zenith`` colour (a plain colour if equal)."""

    horizon: Vec3
    zenith: Vec3
    strength: float


@dataclass(frozen=True)
class CameraSpec:
    location: Vec3
    rotation: Vec3  # XYZ Euler of the Blender camera object (looks down its local -Z)
    lens_mm: float
    sensor_width_mm: float = 36.0
    clip_start: float = 0.01
    clip_end: float = 1000.0


@dataclass(frozen=True)
class SceneSpec:
    kind: str
    shapes: tuple[ShapeSpec, ...]
    lights: tuple[LightSpec, ...]
    world: WorldSpec
    camera: CameraSpec
    cycles_seed: int
    exposure: float = 0.0  # stops, on top of the view transform


def frame_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of frame ``index`` for run seed ``seed``: independent of every other frame (resume-safe)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and frame index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


# --------------------------------------------------------------------------------------------------------------------
# Small samplers


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _log_u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-uniform: sizes and distances spread over orders of magnitude evenly."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _color(rng: np.random.Generator, sat: tuple[float, float] = (0.0, 0.8), val: tuple[float, float] = (0.1, 0.9)) -> Vec3:
    """A random colour in linear RGB (HSV drawn uniformly, value squared for a perceptual-ish spread)."""
    h = _u(rng, 0.0, 1.0)
    s = _u(rng, *sat)
    v = _u(rng, *val)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (r * r, g * g, b * b)  # sRGB-ish to linear, roughly


def _material(rng: np.random.Generator, *, textured_p: float = 0.75) -> MaterialSpec:
    texture = "plain" if rng.random() > textured_p else str(rng.choice(TEXTURE_KINDS[1:]))
    metallic = 1.0 if rng.random() < 0.08 else 0.0
    return MaterialSpec(
        texture=texture,
        color_a=_color(rng),
        color_b=_color(rng),
        scale=_log_u(rng, 0.5, 20.0),
        roughness=_u(rng, 0.15, 1.0),
        metallic=metallic,
    )


def _white_light(rng: np.random.Generator, warmth: float = 0.15) -> Vec3:
    t = _u(rng, -warmth, warmth)
    return (1.0 + max(t, 0.0) * 0.3, 1.0, 1.0 + max(-t, 0.0) * 0.3)


def _camera_rotation(pitch_deg: float, roll_deg: float, yaw_deg: float) -> Vec3:
    """Blender Euler XYZ for a camera level at pitch 0 looking along +Y rotated by ``yaw`` about +Z."""
    return (math.radians(90.0 + pitch_deg), math.radians(roll_deg), math.radians(yaw_deg))


def _random_shape(
    rng: np.random.Generator,
    kinds: tuple[str, ...],
    size: float,
    location: Vec3,
    mesh_files: tuple[str, ...],
    name: str,
) -> ShapeSpec:
    """A primitive of about ``size`` metres, resting on the surface below ``location`` (z = support height)."""
    choices = [k for k in kinds if k != "mesh_file" or mesh_files]
    kind = str(rng.choice(choices))
    stretch = np.exp(rng.uniform(-0.4, 0.4, size=3))
    half = size / 2.0
    sx, sy, sz = (half * float(stretch[0]), half * float(stretch[1]), half * float(stretch[2]))
    if kind in ("uv_sphere", "ico_sphere", "monkey", "torus", "mesh_file"):
        sx = sy = sz = half  # keep their proportions; they read as objects
    yaw = _u(rng, 0.0, 2.0 * math.pi)
    tilt = (0.0, 0.0) if kind in ("cube", "cylinder", "cone") and rng.random() < 0.7 else (
        _u(rng, -0.6, 0.6),
        _u(rng, -0.6, 0.6),
    )
    x, y, z = location
    return ShapeSpec(
        kind=kind,
        location=(x, y, z + sz),
        rotation=(tilt[0], tilt[1], yaw),
        scale=(sx, sy, sz),
        material=_material(rng),
        mesh_path=str(rng.choice(mesh_files)) if kind == "mesh_file" else None,
        name=name,
    )


def _box(name: str, center: Vec3, half: Vec3, material: MaterialSpec, yaw: float = 0.0) -> ShapeSpec:
    return ShapeSpec("cube", center, (0.0, 0.0, yaw), half, material, name=name)


def _rotate_xy(x: float, y: float, yaw: float) -> tuple[float, float]:
    c, s = math.cos(yaw), math.sin(yaw)
    return (c * x - s * y, s * x + c * y)


def _table(rng: np.random.Generator, x: float, y: float, yaw: float, name: str) -> tuple[list[ShapeSpec], float]:
    """A table (top and four legs); returns its shapes and the height of its top surface."""
    w, d, h = _u(rng, 0.6, 1.8), _u(rng, 0.5, 1.0), _u(rng, 0.45, 0.8)
    top_t = _u(rng, 0.02, 0.06)
    mat, leg_mat = _material(rng), _material(rng, textured_p=0.3)
    shapes = [_box(f"{name}_top", (x, y, h - top_t / 2), (w / 2, d / 2, top_t / 2), mat, yaw)]
    leg = _u(rng, 0.02, 0.05)
    for sx in (-1, 1):
        for sy in (-1, 1):
            lx, ly = _rotate_xy(sx * (w / 2 - leg * 1.5), sy * (d / 2 - leg * 1.5), yaw)
            shapes.append(
                ShapeSpec("cylinder", (x + lx, y + ly, (h - top_t) / 2), (0.0, 0.0, 0.0), (leg, leg, (h - top_t) / 2),
                          leg_mat, name=f"{name}_leg")
            )
    return shapes, h


def _local_box(name: str, x: float, y: float, yaw: float, offset: Vec3, half: Vec3, material: MaterialSpec) -> ShapeSpec:
    """A box placed at ``offset`` in a piece of furniture's frame (origin on the floor at (x, y), turned by yaw)."""
    ox, oy = _rotate_xy(offset[0], offset[1], yaw)
    return _box(name, (x + ox, y + oy, offset[2]), half, material, yaw)


def _chair(rng: np.random.Generator, x: float, y: float, yaw: float, name: str) -> list[ShapeSpec]:
    """Seat, backrest (at local -y) and four legs."""
    w, seat_h, back_h, leg = _u(rng, 0.4, 0.55), _u(rng, 0.4, 0.5), _u(rng, 0.3, 0.5), _u(rng, 0.015, 0.03)
    mat, leg_mat = _material(rng), _material(rng, textured_p=0.2)
    shapes = [
        _local_box(f"{name}_seat", x, y, yaw, (0, 0, seat_h), (w / 2, w / 2, 0.025), mat),
        _local_box(f"{name}_back", x, y, yaw, (0, -w / 2 + 0.02, seat_h + back_h / 2), (w / 2, 0.02, back_h / 2), mat),
    ]
    for sx in (-1, 1):
        for sy in (-1, 1):
            shapes.append(_local_box(f"{name}_leg", x, y, yaw, (sx * (w / 2 - leg), sy * (w / 2 - leg), seat_h / 2),
                                     (leg, leg, seat_h / 2), leg_mat))
    return shapes


def _floor_lamp(rng: np.random.Generator, x: float, y: float, h: float, name: str) -> list[ShapeSpec]:
    """Base disc, pole and a cone shade."""
    metal, shade = _material(rng, textured_p=0.0), _material(rng, textured_p=0.3)
    r_shade = _u(rng, 0.15, 0.3)
    return [
        ShapeSpec("cylinder", (x, y, 0.015), (0, 0, 0), (0.15, 0.15, 0.015), metal, name=f"{name}_base"),
        ShapeSpec("cylinder", (x, y, h / 2), (0, 0, 0), (0.015, 0.015, h / 2), metal, name=f"{name}_pole"),
        ShapeSpec("cone", (x, y, h), (0, 0, 0), (r_shade, r_shade, r_shade * 0.9), shade, name=f"{name}_shade"),
    ]


def _wall_furniture(
    rng: np.random.Generator, what: str, x: float, y: float, yaw: float, width: float, depth: float, room_h: float,
    kinds: tuple[str, ...], mesh_files: tuple[str, ...], name: str,
) -> list[ShapeSpec]:
    """Furniture standing against a wall; local +y points into the room, local -y to the wall."""
    mat = _material(rng)
    if what == "shelf":
        h = _u(rng, 0.8, min(2.2, room_h - 0.1))
        n_boards = int(rng.integers(2, 6))
        shapes = [_local_box(f"{name}_side", x, y, yaw, (sx * (width / 2 - 0.01), 0, h / 2), (0.01, depth / 2, h / 2), mat)
                  for sx in (-1, 1)]
        shapes.append(_local_box(f"{name}_back", x, y, yaw, (0, -depth / 2 + 0.005, h / 2), (width / 2, 0.005, h / 2), mat))
        for k in range(n_boards):
            z = 0.02 + k * (h - 0.04) / (n_boards - 1)
            shapes.append(_local_box(f"{name}_board", x, y, yaw, (0, 0, z), (width / 2, depth / 2, 0.01), mat))
            if k < n_boards - 1:  # things on the board
                gap = (h - 0.04) / (n_boards - 1) - 0.03
                for j in range(int(rng.integers(0, 4))):
                    size = min(_log_u(rng, 0.05, 0.25), gap, depth * 0.9)
                    ox, oy = _rotate_xy(_u(rng, -width / 2 + 0.1, width / 2 - 0.1), 0.0, yaw)
                    obj = _random_shape(rng, kinds, size, (x + ox, y + oy, z + 0.01), mesh_files, f"{name}_obj")
                    shapes.append(obj)
        return shapes
    if what == "sofa":
        seat_h, back_h, arm = _u(rng, 0.35, 0.45), _u(rng, 0.35, 0.5), _u(rng, 0.1, 0.2)
        return [
            _local_box(f"{name}_base", x, y, yaw, (0, 0, seat_h / 2), (width / 2, depth / 2, seat_h / 2), mat),
            _local_box(f"{name}_back", x, y, yaw, (0, -depth / 2 + 0.1, seat_h + back_h / 2), (width / 2, 0.1, back_h / 2), mat),
            _local_box(f"{name}_arm", x, y, yaw, (-width / 2 + arm / 2, 0, seat_h + 0.1), (arm / 2, depth / 2, 0.1), mat),
            _local_box(f"{name}_arm", x, y, yaw, (width / 2 - arm / 2, 0, seat_h + 0.1), (arm / 2, depth / 2, 0.1), mat),
        ]
    if what == "bed":
        h = _u(rng, 0.35, 0.55)
        sheet = _material(rng, textured_p=0.5)
        return [
            _local_box(f"{name}_frame", x, y, yaw, (0, 0, h / 2), (width / 2, depth / 2, h / 2), mat),
            _local_box(f"{name}_mattress", x, y, yaw, (0, 0.02, h + 0.08), (width / 2 - 0.03, depth / 2 - 0.05, 0.08), sheet),
            _local_box(f"{name}_head", x, y, yaw, (0, -depth / 2 + 0.03, h + 0.4), (width / 2, 0.03, 0.4), mat),
        ]
    h = _u(rng, 0.5, min(2.0, room_h - 0.1))  # cabinet
    shapes = [_local_box(f"{name}_body", x, y, yaw, (0, 0, h / 2), (width / 2, depth / 2, h / 2), mat)]
    for j in range(int(rng.integers(0, 3))):
        ox, oy = _rotate_xy(_u(rng, -width / 2 + 0.1, width / 2 - 0.1), 0.0, yaw)
        shapes.append(_random_shape(rng, kinds, _log_u(rng, 0.08, 0.3), (x + ox, y + oy, h), mesh_files, f"{name}_obj"))
    return shapes


def _box_contains(shape: ShapeSpec, point: np.ndarray, margin: float) -> bool:
    """Does the shape's oriented box (every unit shape fits [-1, 1]^3 before scaling), grown by ``margin``, hold
    ``point``? Blender's XYZ Euler: R = Rz @ Ry @ Rx."""
    ax, ay, az = shape.rotation
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    local = (rz @ ry @ rx).T @ (np.asarray(point, dtype=np.float64) - np.asarray(shape.location))
    return bool(np.all(np.abs(local) < np.asarray(shape.scale) + margin))


def _clear_of(points: list[tuple[float, float, float]], x: float, y: float, r: float) -> bool:
    """True when a disc of radius ``r`` at (x, y) stays clear of every (px, py, pr) disc."""
    return all((x - px) ** 2 + (y - py) ** 2 >= (r + pr) ** 2 for px, py, pr in points)


# --------------------------------------------------------------------------------------------------------------------
# Scene kinds


def _sample_room(rng: np.random.Generator, mesh_files: tuple[str, ...]) -> tuple[list[ShapeSpec], list[LightSpec], WorldSpec, CameraSpec]:
    W, D, H = _u(rng, 2.5, 9.0), _u(rng, 2.5, 10.0), _u(rng, 2.3, 3.5)
    t = 0.1  # walls are thin boxes, so no face is seen from behind
    floor_m, wall_m, ceil_m = _material(rng, textured_p=0.9), _material(rng, textured_p=0.6), _material(rng, textured_p=0.3)
    shapes = [
        _box("floor", (0, 0, -t / 2), (W / 2 + t, D / 2 + t, t / 2), floor_m),
        _box("ceiling", (0, 0, H + t / 2), (W / 2 + t, D / 2 + t, t / 2), ceil_m),
        _box("wall_n", (0, D / 2 + t / 2, H / 2), (W / 2 + t, t / 2, H / 2), wall_m),
        _box("wall_s", (0, -D / 2 - t / 2, H / 2), (W / 2 + t, t / 2, H / 2), wall_m),
        _box("wall_e", (W / 2 + t / 2, 0, H / 2), (t / 2, D / 2, H / 2), wall_m if rng.random() < 0.7 else _material(rng)),
        _box("wall_w", (-W / 2 - t / 2, 0, H / 2), (t / 2, D / 2, H / 2), wall_m),
    ]
    # Camera near the south wall looking into the room (+Y), keeping 0.3 m from walls.
    cam_x = _u(rng, -W / 2 + 0.3, W / 2 - 0.3)
    cam_y = _u(rng, -D / 2 + 0.3, -D / 2 + max(0.35, 0.4 * D))
    cam_z = _u(rng, 0.6, min(1.9, H - 0.3))
    occupied = [(cam_x, cam_y, 0.5)]
    kinds = ("cube", "uv_sphere", "ico_sphere", "cylinder", "cone", "torus", "monkey", "mesh_file")
    # Against the walls: shelves, sofas, cabinets, beds, facing into the room.
    for i in range(int(rng.integers(1, 5))):
        wall = int(rng.integers(0, 4))  # 0 north, 1 east, 2 south, 3 west
        along = W if wall in (0, 2) else D
        if along < 1.4:
            continue
        what = str(rng.choice(["shelf", "sofa", "cabinet", "bed"]))
        width = min(_u(rng, 0.6, 2.2), along - 0.4)
        depth = {"shelf": _u(rng, 0.25, 0.45), "sofa": _u(rng, 0.8, 1.0), "cabinet": _u(rng, 0.4, 0.65),
                 "bed": _u(rng, 1.6, 2.1)}[what]
        pos = _u(rng, -along / 2 + width / 2 + 0.05, along / 2 - width / 2 - 0.05)
        inset = depth / 2 + 0.01
        x, y, yaw = {0: (pos, D / 2 - inset, math.pi), 1: (W / 2 - inset, pos, math.pi / 2),
                     2: (pos, -D / 2 + inset, 0.0), 3: (-W / 2 + inset, pos, -math.pi / 2)}[wall]
        r = math.hypot(width, depth) / 2
        if not _clear_of(occupied, x, y, r):
            continue
        occupied.append((x, y, r))
        shapes += _wall_furniture(rng, what, x, y, yaw, width, depth, H, kinds, mesh_files, f"{what}{i}")
    # Free-standing: tables with things on them, chairs, lamps, rugs and loose objects.
    for i in range(int(rng.integers(2, 10))):
        what = str(rng.choice(["table", "chair", "lamp", "object", "object"]))
        r = {"table": 0.95, "chair": 0.35, "lamp": 0.3, "object": 0.45}[what]
        if W / 2 - r <= -W / 2 + r or D / 2 - r <= -D / 2 + r:
            continue
        for _ in range(20):  # rejection sampling for a free spot
            x, y = _u(rng, -W / 2 + r, W / 2 - r), _u(rng, -D / 2 + r, D / 2 - r)
            if _clear_of(occupied, x, y, r):
                break
        else:
            continue
        occupied.append((x, y, r))
        yaw = _u(rng, 0, 2 * math.pi)
        if what == "table":
            table, top = _table(rng, x, y, yaw, f"table{i}")
            shapes += table
            for j in range(int(rng.integers(0, 5))):
                ox, oy = _u(rng, -0.3, 0.3), _u(rng, -0.2, 0.2)
                shapes.append(_random_shape(rng, kinds, _log_u(rng, 0.06, 0.3), (x + ox, y + oy, top), mesh_files,
                                            f"table{i}_obj{j}"))
        elif what == "chair":
            shapes += _chair(rng, x, y, yaw, f"chair{i}")
        elif what == "lamp":
            shapes += _floor_lamp(rng, x, y, min(H - 0.3, _u(rng, 1.2, 1.9)), f"lamp{i}")
        else:
            shapes.append(_random_shape(rng, kinds, _log_u(rng, 0.2, 0.8), (x, y, 0.0), mesh_files, f"obj{i}"))
    if rng.random() < 0.5:  # a rug: a thin box on the floor (never under the camera's feet, which is fine too)
        rw, rd = _u(rng, 0.8, min(3.0, W - 0.4)), _u(rng, 0.6, min(2.5, D - 0.4))
        shapes.append(_box("rug", (_u(rng, -W / 2 + rw / 2, W / 2 - rw / 2), _u(rng, -D / 2 + rd / 2, D / 2 - rd / 2),
                                   0.006), (rw / 2, rd / 2, 0.006), _material(rng, textured_p=1.0)))
    for i in range(int(rng.integers(0, 4))):  # pictures on the walls
        pw, ph = _u(rng, 0.3, 1.2), _u(rng, 0.25, 0.9)
        wall = int(rng.integers(0, 4))
        along = W if wall in (0, 2) else D
        if along < pw + 0.2:
            continue
        pos, z = _u(rng, -along / 2 + pw / 2, along / 2 - pw / 2), _u(rng, 1.0, max(1.05, H - ph / 2 - 0.2))
        x, y, yaw = {0: (pos, D / 2 - 0.015, 0.0), 1: (W / 2 - 0.015, pos, math.pi / 2),
                     2: (pos, -D / 2 + 0.015, 0.0), 3: (-W / 2 + 0.015, pos, math.pi / 2)}[wall]
        shapes.append(_box(f"picture{i}", (x, y, z), (pw / 2, 0.015, ph / 2),
                           _material(rng, textured_p=1.0), yaw))
    lights = []
    for k in range(int(rng.integers(1, 4))):
        lights.append(
            LightSpec("AREA", (_u(rng, -W / 2 + 0.3, W / 2 - 0.3), _u(rng, -D / 2 + 0.3, D / 2 - 0.3), H - 0.02),
                      (0.0, 0.0, 0.0), _log_u(rng, 60.0, 400.0) * W * D / 20.0, _white_light(rng), _u(rng, 0.3, 1.5))
        )
    if rng.random() < 0.5:
        lights.append(LightSpec("POINT", (_u(rng, -W / 2 + 0.3, W / 2 - 0.3), _u(rng, -D / 2 + 0.3, D / 2 - 0.3),
                                          _u(rng, 0.5, H - 0.3)), (0.0, 0.0, 0.0), _log_u(rng, 20.0, 150.0),
                                _white_light(rng, 0.4), _u(rng, 0.02, 0.2)))
    world_c = _color(rng, (0.0, 0.3), (0.4, 0.9))
    world = WorldSpec(world_c, world_c, _u(rng, 0.05, 0.3))  # fills the room only through nothing: ambient for reflections
    yaw = _u(rng, -50.0, 50.0)
    camera = CameraSpec((cam_x, cam_y, cam_z), _camera_rotation(_u(rng, -30.0, 10.0), _u(rng, -5.0, 5.0), yaw),
                        lens_from_horizontal_fov(_u(rng, 45.0, 90.0)))
    return shapes, lights, world, camera


def _sample_tabletop(rng: np.random.Generator, mesh_files: tuple[str, ...]) -> tuple[list[ShapeSpec], list[LightSpec], WorldSpec, CameraSpec]:
    wall_y = _u(rng, 0.7, 3.0)
    shapes = [
        _box("table", (0, 0, -0.025), (3.0, 4.0, 0.025), _material(rng, textured_p=0.9)),
        _box("wall", (0, wall_y + 0.05, 1.5), (3.0, 0.05, 1.5), _material(rng, textured_p=0.7)),
    ]
    cam_y = -_u(rng, 0.1, 0.6)
    occupied = [(0.0, cam_y, 0.15)]
    kinds = ("cube", "uv_sphere", "ico_sphere", "cylinder", "cone", "torus", "monkey", "mesh_file")
    for i in range(int(rng.integers(3, 12))):
        size = _log_u(rng, 0.04, 0.35)
        for _ in range(20):
            x, y = _u(rng, -0.8, 0.8) * (wall_y + 0.5), _u(rng, 0.1, wall_y - size / 2)
            if _clear_of(occupied, x, y, size / 2):
                break
        else:
            continue
        occupied.append((x, y, size / 2))
        shapes.append(_random_shape(rng, kinds, size, (x, y, 0.0), mesh_files, f"obj{i}"))
    lights = [
        LightSpec("AREA", (_u(rng, -1.5, 1.5), _u(rng, -1.0, 1.0), _u(rng, 1.0, 2.0)),
                  (_u(rng, -0.5, 0.5), _u(rng, -0.5, 0.5), 0.0), _log_u(rng, 30.0, 200.0), _white_light(rng),
                  _u(rng, 0.2, 1.0)),
    ]
    if rng.random() < 0.5:
        lights.append(LightSpec("SUN", (0, 0, 5), (_u(rng, 0.2, 0.9), 0.0, _u(rng, 0, 2 * math.pi)),
                                _u(rng, 1.0, 4.0), _white_light(rng, 0.3), math.radians(_u(rng, 0.5, 5.0))))
    world_c = _color(rng, (0.0, 0.3), (0.3, 0.9))
    world = WorldSpec(world_c, world_c, _u(rng, 0.1, 0.6))
    camera = CameraSpec((_u(rng, -0.2, 0.2), cam_y, _u(rng, 0.1, 0.7)),
                        _camera_rotation(_u(rng, -45.0, -5.0), _u(rng, -5.0, 5.0), _u(rng, -20.0, 20.0)),
                        lens_from_horizontal_fov(_u(rng, 40.0, 80.0)))
    return shapes, lights, world, camera


def _sample_street(rng: np.random.Generator, mesh_files: tuple[str, ...]) -> tuple[list[ShapeSpec], list[LightSpec], WorldSpec, CameraSpec]:
    road_w = _u(rng, 6.0, 14.0)
    walk_w = _u(rng, 1.5, 4.0)
    length = _u(rng, 40.0, 100.0)  # street length; beyond it open ground or a closing row of buildings
    asphalt = MaterialSpec("noise", (0.02, 0.02, 0.025), (0.06, 0.06, 0.065), _u(rng, 2.0, 20.0), _u(rng, 0.6, 1.0))
    shapes = [
        _box("ground", (0, 40.0, -0.05), (120.0, 120.0, 0.05), _material(rng, textured_p=0.9)),
        _box("road", (0, length / 2 - 10, 0.001), (road_w / 2, length / 2 + 30, 0.001), asphalt),
    ]
    walk_m = _material(rng, textured_p=0.9)
    for side in (-1, 1):
        shapes.append(_box(f"sidewalk{side}", (side * (road_w / 2 + walk_w / 2), length / 2 - 10, 0.075),
                           (walk_w / 2, length / 2 + 30, 0.075), walk_m))
    # Building blocks along both sides, with random gaps.
    for side in (-1, 1):
        y = -10.0
        while y < length:
            bw = _u(rng, 5.0, 25.0)
            if rng.random() < 0.85:
                depth, height = _u(rng, 6.0, 20.0), _log_u(rng, 4.0, 45.0)
                x = side * (road_w / 2 + walk_w + _u(rng, 0.0, 3.0) + depth / 2)
                shapes.append(_box(f"building{side}_{int(y)}", (x, y + bw / 2, height / 2), (depth / 2, bw / 2, height / 2),
                                   _material(rng, textured_p=0.8)))
            y += bw + (_u(rng, 0.0, 10.0) if rng.random() < 0.3 else 0.0)
    if rng.random() < 0.6:  # a row of buildings closing the street keeps most depth under ~100 m
        depth, height = _u(rng, 8.0, 20.0), _log_u(rng, 6.0, 40.0)
        shapes.append(_box("building_end", (_u(rng, -10.0, 10.0), length + depth / 2, height / 2),
                           (road_w + 2 * walk_w + _u(rng, 10.0, 60.0), depth / 2, height / 2), _material(rng, textured_p=0.8)))
    # Cars on the road, poles and trees on the sidewalks, some loose objects.
    for i in range(int(rng.integers(0, 12))):
        lane_x = _u(rng, -road_w / 2 + 1.2, road_w / 2 - 1.2)
        y = _u(rng, 3.0, length)
        L, Wc, Hc = _u(rng, 3.5, 5.2), _u(rng, 1.6, 2.0), _u(rng, 0.9, 1.2)
        body = _material(rng, textured_p=0.1)
        yaw = math.radians(_u(rng, -8.0, 8.0))
        shapes.append(_box(f"car{i}", (lane_x, y, 0.3 + Hc / 2), (Wc / 2, L / 2, Hc / 2), body, yaw))
        shapes.append(_box(f"car{i}_cabin", (lane_x, y - 0.2, 0.3 + Hc + 0.3), (Wc / 2 - 0.1, L / 4, 0.3),
                           MaterialSpec("plain", (0.02, 0.03, 0.04), (0, 0, 0), 1.0, 0.1), yaw))
    for i in range(int(rng.integers(0, 14))):
        side = 1 if rng.random() < 0.5 else -1
        x, y = side * (road_w / 2 + _u(rng, 0.3, walk_w - 0.3)), _u(rng, 2.0, length)
        if rng.random() < 0.5:
            h, r = _u(rng, 3.0, 9.0), _u(rng, 0.05, 0.2)
            shapes.append(ShapeSpec("cylinder", (x, y, h / 2), (0, 0, 0), (r, r, h / 2), _material(rng, textured_p=0.2),
                                    name=f"pole{i}"))
        else:
            h, r, cr = _u(rng, 1.5, 4.0), _u(rng, 0.1, 0.3), _u(rng, 1.0, 3.0)
            shapes.append(ShapeSpec("cylinder", (x, y, h / 2), (0, 0, 0), (r, r, h / 2),
                                    MaterialSpec("noise", (0.08, 0.05, 0.02), (0.2, 0.12, 0.05), 8.0, 0.9), name=f"trunk{i}"))
            green = MaterialSpec("voronoi", _color(rng, (0.5, 0.9), (0.1, 0.5)), (0.05, 0.2, 0.03), _u(rng, 2.0, 8.0), 0.9)
            shapes.append(ShapeSpec("ico_sphere", (x, y, h + cr * 0.8), (0, 0, _u(rng, 0, 6.28)), (cr, cr, cr * 0.9),
                                    green, name=f"crown{i}"))
    kinds = ("cube", "uv_sphere", "ico_sphere", "cylinder", "cone", "torus", "monkey", "mesh_file")
    for i in range(int(rng.integers(0, 6))):
        x, y = _u(rng, -road_w / 2 - walk_w, road_w / 2 + walk_w), _u(rng, 3.0, 40.0)
        shapes.append(_random_shape(rng, kinds, _log_u(rng, 0.3, 2.5), (x, y, 0.0), mesh_files, f"obj{i}"))
    sun_elev = _u(rng, 10.0, 75.0)
    lights = [LightSpec("SUN", (0, 0, 50), (math.radians(90.0 - sun_elev), 0.0, _u(rng, 0, 2 * math.pi)),
                        _u(rng, 1.5, 5.0), _white_light(rng, 0.5), math.radians(_u(rng, 0.5, 3.0)))]
    zenith = _color(rng, (0.2, 0.8), (0.4, 0.95))
    horizon = tuple(0.5 * c + 0.5 * w for c, w in zip(zenith, _color(rng, (0.0, 0.3), (0.7, 1.0))))
    world = WorldSpec(horizon, zenith, _u(rng, 0.3, 1.5))  # type: ignore[arg-type]
    cam_x = _u(rng, -road_w / 2 - walk_w + 0.5, road_w / 2 + walk_w - 0.5)
    camera = CameraSpec((cam_x, 0.0, _u(rng, 1.2, 2.5)),
                        _camera_rotation(_u(rng, -12.0, 6.0), _u(rng, -4.0, 4.0), _u(rng, -35.0, 35.0)),
                        lens_from_horizontal_fov(_u(rng, 45.0, 95.0)))
    # Keep the camera out of any object it could start inside (cars, poles, trees, loose objects).
    cam = np.asarray(camera.location)
    shapes = [s for s in shapes if not _box_contains(s, cam, margin=0.3)]
    return shapes, lights, world, camera


_SAMPLERS = {"tabletop": _sample_tabletop, "room": _sample_room, "street": _sample_street}


def sample_scene(
    seed: int,
    index: int,
    *,
    kinds: tuple[str, ...] | None = None,
    kind_weights: dict[str, float] | None = None,
    mesh_files: tuple[str | Path, ...] = (),
) -> SceneSpec:
    """The scene of frame ``index`` in a run with seed ``seed``: the same arguments give the same scene."""
    rng = frame_rng(seed, index)
    kinds = tuple(kinds) if kinds else SCENE_KINDS
    for k in kinds:
        if k not in _SAMPLERS:
            raise ValueError(f"unknown scene kind {k!r}; expected some of {', '.join(SCENE_KINDS)}")
    weights = kind_weights or DEFAULT_KIND_WEIGHTS
    p = np.array([weights.get(k, 1.0) for k in kinds], dtype=np.float64)
    kind = str(kinds[int(rng.choice(len(kinds), p=p / p.sum()))])
    shapes, lights, world, camera = _SAMPLERS[kind](rng, tuple(str(m) for m in mesh_files))
    return SceneSpec(
        kind=kind,
        shapes=tuple(shapes),
        lights=tuple(lights),
        world=world,
        camera=camera,
        cycles_seed=int(rng.integers(0, 2**31 - 1)),
        exposure=_u(rng, -0.5, 0.5),
    )


def mesh_files_in(folder: str | Path | None) -> tuple[str, ...]:
    """The mesh files Blender can import in ``folder``, sorted so that a run is reproducible."""
    if folder is None:
        return ()
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--mesh-dir {folder}: not a folder")
    files = tuple(sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in MESH_SUFFIXES))
    if not files:
        raise ValueError(f"--mesh-dir {folder}: no mesh files ({', '.join(MESH_SUFFIXES)}) in it")
    return files
