"""Pinhole geometry: intrinsics, unprojection of a metric depth map to camera space, grid meshes.

Ground floor: numpy only (Pillow, when present, for reading EXIF). Blender's add-on builds its meshes from what this
module returns, and the tests check it without Blender.

Conventions
-----------
- Intrinsics follow OpenCV: pixel ``(u, v)`` (column, row) has integer coordinates at its centre, so an image of
  width ``W`` spans ``u`` in ``[-0.5, W - 0.5]`` and its centre is ``(W - 1) / 2``.
- Depth is planar depth ``z`` along the optical axis, in metres (what MetricGold predicts).
- Camera space is Blender's: the camera looks down ``-Z``, ``+Y`` is up, ``+X`` is right. Pixel ``(u, v)`` with depth
  ``d`` goes to ``((u - cx) / fx * d, -(v - cy) / fy * d, -d)``.
- Without known intrinsics the field of view defaults to :data:`DEFAULT_HORIZONTAL_FOV_DEG` (55 degrees
  horizontally, a typical phone main camera: about 26 mm in 35 mm terms for 4:3 photos).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_HORIZONTAL_FOV_DEG",
    "FOCAL_SOURCES",
    "FULL_FRAME_DIAGONAL_MM",
    "Camera",
    "ExifFocal",
    "GridMesh",
    "Intrinsics",
    "build_grid_mesh",
    "discontinuity_face_mask",
    "exif_focal",
    "focal_35mm_from_exif",
    "focal_from_exif_tags",
    "grid_edges",
    "grid_faces",
    "pixel_uvs",
    "resolve_camera",
    "resolve_intrinsics",
    "same_aspect",
    "subsample_indices",
    "unproject",
]

#: Horizontal field of view used when the photo says nothing about its camera (a typical phone main camera).
DEFAULT_HORIZONTAL_FOV_DEG = 55.0

#: Diagonal of a 36 x 24 mm frame; EXIF's "focal length in 35 mm film" is defined against it (CIPA DC-008).
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels of an image ``width`` x ``height`` (OpenCV convention, see module docs)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"intrinsics {name} must be finite, got {value}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"intrinsics need fx > 0 and fy > 0, got fx={self.fx}, fy={self.fy}")
        if int(self.width) != self.width or int(self.height) != self.height or self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive integers, got {self.width} x {self.height}")

    def as_json(self) -> dict[str, float]:
        """The intrinsics record of the plain folder format (``ROOT/intrinsics/NAME.json``): fx, fy, cx, cy."""
        return {"fx": float(self.fx), "fy": float(self.fy), "cx": float(self.cx), "cy": float(self.cy)}

    @classmethod
    def from_fov(
        cls, width: int, height: int, fov_deg: float = DEFAULT_HORIZONTAL_FOV_DEG, axis: str = "horizontal"
    ) -> Intrinsics:
        """Square pixels, principal point at the image centre, ``fov_deg`` across the full width (or height)."""
        if not 0.0 < fov_deg < 180.0:
            raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
        if axis not in ("horizontal", "vertical", "diagonal"):
            raise ValueError(f"fov axis must be horizontal, vertical or diagonal, got {axis!r}")
        extent = {"horizontal": width, "vertical": height, "diagonal": math.hypot(width, height)}[axis]
        f = extent / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))

    @classmethod
    def from_focal_35mm(cls, width: int, height: int, focal_35mm: float) -> Intrinsics:
        """From a 35 mm equivalent focal length: the image diagonal sees what a 36 x 24 mm frame's diagonal does."""
        if not (math.isfinite(focal_35mm) and focal_35mm > 0):
            raise ValueError(f"35 mm equivalent focal length must be > 0, got {focal_35mm}")
        f = focal_35mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))

    @property
    def horizontal_fov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.width / (2.0 * self.fx)))

    @property
    def matrix(self) -> np.ndarray:
        """The 3 x 3 camera matrix K (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera for the image resized to ``width`` x ``height`` (pixel centres stay pixel centres)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, int(width), int(height)
        )

    def subsampled(self, stride: int) -> Intrinsics:
        """Intrinsics of the grid of every ``stride``-th pixel (pixel ``(i*stride, j*stride)`` becomes ``(i, j)``)."""
        cols, rows = len(subsample_indices(self.width, stride)), len(subsample_indices(self.height, stride))
        return replace(self, fx=self.fx / stride, fy=self.fy / stride, cx=self.cx / stride, cy=self.cy / stride,
                       width=cols, height=rows)


#: Where a camera's focal length came from, in order of precedence: a value the user typed, the photo's EXIF, the
#: model's own estimate (Depth Pro), the default field of view.
FOCAL_SOURCES = ("user", "exif", "model", "default")

#: EXIF Orientation values 5-8 turn the stored image by 90 degrees for display: its width and height swap.
EXIF_ORIENTATIONS_SWAPPING_AXES = frozenset({5, 6, 7, 8})
#: FocalPlaneResolutionUnit -> millimetres: 2 (inch) and 3 (cm) are the standard's; some cameras write 4 (mm), 5 (um).
_FOCAL_PLANE_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
_EXIF_IFD = 0x8769  # the Exif sub-IFD, where the camera tags live
_ORIENTATION = 0x0112
_FOCAL_LENGTH, _FOCAL_35MM = 0x920A, 0xA405
_PLANE_X, _PLANE_Y, _PLANE_UNIT = 0xA20E, 0xA20F, 0xA210
_PIXEL_X, _PIXEL_Y = 0xA002, 0xA003


def _positive(value: Any) -> float | None:
    try:
        number = float(value)  # ints, floats and Pillow's IFDRational alike
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


@dataclass(frozen=True)
class ExifFocal:
    """The focal length a photo's EXIF gives, in pixels of the photo as displayed (EXIF orientation applied), which
    is ``width`` x ``height``. ``focal_35mm``: the 35 mm equivalent; ``tags``: which tags it came from."""

    fx: float
    fy: float
    width: int
    height: int
    focal_35mm: float
    tags: str

    @classmethod
    def from_35mm(cls, width: int, height: int, focal_35mm: float, tags: str = "FocalLengthIn35mmFilm") -> ExifFocal:
        k = Intrinsics.from_focal_35mm(width, height, focal_35mm)
        return cls(k.fx, k.fy, int(width), int(height), float(focal_35mm), tags)


def focal_from_exif_tags(
    tags: Any, stored_width: int, stored_height: int, orientation: int = 1
) -> ExifFocal | None:
    """The focal length in the EXIF sub-IFD ``tags`` (a mapping tag number -> value) of an image stored
    ``stored_width`` x ``stored_height``, for the photo as displayed after EXIF ``orientation``; None if unknown.

    ``FocalLengthIn35mmFilm`` first; else ``FocalLength`` (mm) with the sensor's pixel density
    ``FocalPlaneX/YResolution`` per ``FocalPlaneResolutionUnit`` (pixels of the image the camera wrote,
    ``PixelX/YDimension``, so a resized copy is scaled). A bare ``FocalLength`` says nothing about the field of view
    without the sensor size, and gives None.
    """
    swap = orientation in EXIF_ORIENTATIONS_SWAPPING_AXES
    width, height = (stored_height, stored_width) if swap else (stored_width, stored_height)
    focal_35mm = _positive(tags.get(_FOCAL_35MM))
    if focal_35mm is not None:
        return ExifFocal.from_35mm(width, height, focal_35mm, f"EXIF FocalLengthIn35mmFilm {focal_35mm:g} mm")
    focal_mm, x_res = _positive(tags.get(_FOCAL_LENGTH)), _positive(tags.get(_PLANE_X))
    try:
        unit_mm = _FOCAL_PLANE_UNIT_MM.get(int(tags.get(_PLANE_UNIT, 2)))
    except (TypeError, ValueError):
        unit_mm = None
    if focal_mm is None or x_res is None or unit_mm is None:
        return None
    y_res = _positive(tags.get(_PLANE_Y)) or x_res
    written_w, written_h = _positive(tags.get(_PIXEL_X)), _positive(tags.get(_PIXEL_Y))
    scale_x = stored_width / written_w if written_w else 1.0
    scale_y = stored_height / written_h if written_h else scale_x
    fx_stored = focal_mm * x_res / unit_mm * scale_x  # mm x pixels per mm = pixels
    fy_stored = focal_mm * y_res / unit_mm * scale_y
    fx, fy = (fy_stored, fx_stored) if swap else (fx_stored, fy_stored)
    focal_35mm = 0.5 * (fx + fy) * FULL_FRAME_DIAGONAL_MM / math.hypot(width, height)
    sensor_mm = stored_width / scale_x / (x_res / unit_mm)
    return ExifFocal(fx, fy, int(width), int(height), focal_35mm,
                     f"EXIF FocalLength {focal_mm:g} mm on a {sensor_mm:.4g} mm wide sensor")


def exif_focal(image: Any) -> ExifFocal | None:
    """The EXIF focal length of an image path or PIL image (see :func:`focal_from_exif_tags`), or None when absent,
    unreadable, or when Pillow is not installed (Blender's Python: the worker reads it there)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as im:
                exif, size = im.getexif(), im.size
        else:
            exif, size = image.getexif(), image.size
        tags = exif.get_ifd(_EXIF_IFD)
        orientation = exif.get(_ORIENTATION, 1)
    except (OSError, AttributeError, ValueError, SyntaxError):
        return None
    try:
        orientation = int(orientation)
    except (TypeError, ValueError):
        orientation = 1
    return focal_from_exif_tags(tags, size[0], size[1], orientation)


def focal_35mm_from_exif(image: Any) -> float | None:
    """The 35 mm equivalent focal length in an image's EXIF (see :func:`exif_focal`), or None."""
    found = exif_focal(image)
    return None if found is None else found.focal_35mm


@dataclass(frozen=True)
class Camera:
    """The camera of a photo: intrinsics and where the focal length came from (one of :data:`FOCAL_SOURCES`).

    Its JSON (``as_json``) is what the worker returns with a prediction and what the CLI writes to
    ``NAME_camera.json``; Blender builds its camera from it (``from_json``), with no Pillow there.
    """

    intrinsics: Intrinsics
    focal_source: str
    description: str

    def __post_init__(self) -> None:
        if self.focal_source not in FOCAL_SOURCES:
            raise ValueError(f"focal_source must be one of {FOCAL_SOURCES}, got {self.focal_source!r}")

    @property
    def focal_35mm(self) -> float:
        k = self.intrinsics
        return 0.5 * (k.fx + k.fy) * FULL_FRAME_DIAGONAL_MM / math.hypot(k.width, k.height)

    def as_json(self) -> dict[str, Any]:
        k = self.intrinsics
        return {"fx": float(k.fx), "fy": float(k.fy), "cx": float(k.cx), "cy": float(k.cy), "width": int(k.width),
                "height": int(k.height), "focal_source": self.focal_source, "focal_35mm": self.focal_35mm,
                "description": self.description}

    @classmethod
    def from_json(cls, data: Any, where: str = "camera") -> Camera:
        """Parse :meth:`as_json`'s dict; a missing or bad field raises ValueError naming ``where`` and the field."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object with fx, fy, cx, cy, width, height, focal_source")
        values: dict[str, Any] = {}
        for name in ("fx", "fy", "cx", "cy", "width", "height"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}.{name}: expected a number, got {value!r}")
            values[name] = value
        for name in ("width", "height"):
            if int(values[name]) != values[name]:
                raise ValueError(f"{where}.{name}: expected an integer, got {values[name]!r}")
            values[name] = int(values[name])
        try:
            k = Intrinsics(**values)
            return cls(k, str(data.get("focal_source")), str(data.get("description", "")))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def resolve_camera(
    width: int,
    height: int,
    *,
    intrinsics: Intrinsics | tuple[float, float, float, float] | None = None,
    fov_deg: float | None = None,
    focal_35mm: float | None = None,
    exif: ExifFocal | None = None,
    model_focal_px: float | None = None,
) -> Camera:
    """The camera of an image ``width`` x ``height``. Precedence: what the user gave (explicit ``intrinsics`` >
    horizontal ``fov_deg`` > 35 mm equivalent ``focal_35mm``) > the photo's ``exif`` focal > the model's estimate
    ``model_focal_px`` (pixels of an image ``width`` wide) > the default field of view.

    Intrinsics or an EXIF focal given for another size of the same photo are rescaled to ``width`` x ``height``.
    """
    if intrinsics is not None:
        if isinstance(intrinsics, Intrinsics):
            k = intrinsics if (intrinsics.width, intrinsics.height) == (width, height) else intrinsics.scaled(
                width, height)
        else:
            fx, fy, cx, cy = (float(x) for x in intrinsics)
            k = Intrinsics(fx, fy, cx, cy, int(width), int(height))
        return Camera(k, "user", f"intrinsics fx={k.fx:.2f} fy={k.fy:.2f} cx={k.cx:.2f} cy={k.cy:.2f}")
    if fov_deg is not None:
        return Camera(Intrinsics.from_fov(width, height, fov_deg), "user",
                      f"horizontal field of view {fov_deg:g} degrees (given)")
    if focal_35mm is not None:
        return Camera(Intrinsics.from_focal_35mm(width, height, focal_35mm), "user",
                      f"focal length {focal_35mm:g} mm, 35 mm equivalent (given)")
    if exif is not None:
        sx, sy = width / exif.width, height / exif.height
        k = Intrinsics(exif.fx * sx, exif.fy * sy, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))
        return Camera(k, "exif", f"{exif.tags} ({exif.focal_35mm:.3g} mm, 35 mm equivalent)")
    if model_focal_px is not None:
        f = float(model_focal_px)
        k = Intrinsics(f, f, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))
        return Camera(k, "model", f"the model's estimate, {k.horizontal_fov_deg:.1f} degrees horizontal field of view")
    return Camera(Intrinsics.from_fov(width, height, DEFAULT_HORIZONTAL_FOV_DEG), "default",
                  f"default horizontal field of view {DEFAULT_HORIZONTAL_FOV_DEG:g} degrees")


def resolve_intrinsics(
    width: int,
    height: int,
    *,
    intrinsics: Intrinsics | tuple[float, float, float, float] | None = None,
    fov_deg: float | None = None,
    focal_35mm: float | None = None,
) -> tuple[Intrinsics, str]:
    """Pick intrinsics for an image: explicit (fx, fy, cx, cy) > field of view > EXIF 35 mm focal > default FOV.

    ``focal_35mm`` here is the photo's EXIF value (:func:`focal_35mm_from_exif`). Returns the intrinsics and a short
    description of where they came from (for reports); :func:`resolve_camera` is the full version.
    """
    exif = None if focal_35mm is None else ExifFocal.from_35mm(
        width, height, focal_35mm, f"EXIF focal length {focal_35mm:g} mm")
    camera = resolve_camera(width, height, intrinsics=intrinsics, fov_deg=fov_deg, exif=exif)
    return camera.intrinsics, camera.description


def same_aspect(width: int, height: int, depth_shape: tuple[int, ...], tolerance: float = 0.01) -> bool:
    """Whether an image of ``width`` x ``height`` and a depth map of shape ``(H, W)`` have the same aspect ratio
    (within ``tolerance``, relative): a depth may be at another resolution than its photo, never another shape."""
    hd, wd = int(depth_shape[0]), int(depth_shape[1])
    return abs(width / height - wd / hd) <= tolerance * (wd / hd)


def subsample_indices(size: int, stride: int) -> np.ndarray:
    """Pixel indices kept along one axis: every ``stride``-th, starting at 0 (``ceil(size / stride)`` of them)."""
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    return np.arange(0, size, int(stride))


def unproject(depth: np.ndarray, k: Intrinsics, stride: int = 1) -> np.ndarray:
    """Every ``stride``-th pixel of ``depth`` (metres) -> points in Blender camera space, shape (rows, cols, 3).

    ``k`` must describe ``depth``'s own pixel grid (see :meth:`Intrinsics.scaled`). Invalid depth gives NaN points.
    Computed in float64.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be H x W, got shape {depth.shape}")
    h, w = depth.shape
    if (w, h) != (k.width, k.height):
        raise ValueError(f"intrinsics are for {k.width} x {k.height} pixels but the depth is {w} x {h}")
    rows, cols = subsample_indices(h, stride), subsample_indices(w, stride)
    d = depth[np.ix_(rows, cols)].astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = np.where(np.isfinite(d) & (d > 0), d, np.nan)
    u = cols.astype(np.float64)[None, :]
    v = rows.astype(np.float64)[:, None]
    x = (u - k.cx) / k.fx * d
    y = -(v - k.cy) / k.fy * d  # image rows grow downwards, Blender's +Y is up
    return np.stack([x, y, -d], axis=-1)  # the camera looks down -Z


def grid_faces(rows: int, cols: int) -> np.ndarray:
    """Quads of a ``rows`` x ``cols`` vertex grid (vertex ``r * cols + c``), shape ((rows-1)*(cols-1), 4), int32
    (Blender's index type).

    Winding is counter-clockwise as seen from the camera (top-left, bottom-left, bottom-right, top-right), so the
    normals face the camera.
    """
    if rows < 2 or cols < 2:
        return np.zeros((0, 4), dtype=np.int32)
    idx = np.arange(rows * cols, dtype=np.int32).reshape(rows, cols)
    top_left, top_right = idx[:-1, :-1], idx[:-1, 1:]
    bottom_left, bottom_right = idx[1:, :-1], idx[1:, 1:]
    return np.stack([top_left, bottom_left, bottom_right, top_right], axis=-1).reshape(-1, 4)


def discontinuity_face_mask(depth_grid: np.ndarray, faces: np.ndarray, max_relative_jump: float | None) -> np.ndarray:
    """Which faces to keep: all corners valid and, when ``max_relative_jump`` is set, no depth jump across them.

    A face is cut when ``(max(d) - min(d)) / min(d) > max_relative_jump`` over its corners: relative, so that a
    far wall and a near table cut alike (a tilted plane's jump per pixel grows with depth, the ratio does not).
    """
    d = np.asarray(depth_grid, dtype=np.float64).reshape(-1)[faces]
    with np.errstate(invalid="ignore"):
        keep = np.all(np.isfinite(d) & (d > 0), axis=1)
        if max_relative_jump is not None:
            if max_relative_jump < 0:
                raise ValueError(f"max_relative_jump must be >= 0, got {max_relative_jump}")
            d_lo, d_hi = d.min(axis=1), d.max(axis=1)
            keep &= (d_hi - d_lo) <= max_relative_jump * d_lo
    return keep


def _grid_face_keep(d_grid: np.ndarray, max_relative_jump: float | None) -> np.ndarray:
    """:func:`discontinuity_face_mask` for all quads of a grid at once, (rows-1, cols-1), from shifted views of
    the depth grid instead of gathering corners (NaN marks invalid depth; np.minimum/maximum propagate it)."""
    corners = (d_grid[:-1, :-1], d_grid[1:, :-1], d_grid[1:, 1:], d_grid[:-1, 1:])
    lo = np.minimum(np.minimum(corners[0], corners[1]), np.minimum(corners[2], corners[3]))
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(lo) & (lo > 0)
        if max_relative_jump is not None:
            if max_relative_jump < 0:
                raise ValueError(f"max_relative_jump must be >= 0, got {max_relative_jump}")
            hi = np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
            keep &= (hi - lo) <= max_relative_jump * lo
    return keep


def pixel_uvs(rows: np.ndarray, cols: np.ndarray, width: int, height: int) -> np.ndarray:
    """UV of each pixel centre of the grid, shape (len(rows), len(cols), 2); Blender's UV origin is bottom-left."""
    u = (cols.astype(np.float64) + 0.5) / width
    v = 1.0 - (rows.astype(np.float64) + 0.5) / height
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu, vv], axis=-1)


def grid_edges(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the kept quads of a vertex grid, and each kept quad's corner edges, without searching.

    ``keep`` is the (rows-1, cols-1) mask of quads (in :func:`grid_faces` order). Returns ``edges`` (E, 2) grid
    vertex indices, every edge used by a kept quad exactly once, and ``face_edges`` (F, 4): for corner ``i`` of each
    kept quad, the edge from corner ``i`` to corner ``i + 1`` (Blender's ``corner_edge``). A grid's edges are known
    in advance: horizontal ``(r, c)-(r, c+1)`` and vertical ``(r, c)-(r+1, c)``; an edge exists when a quad on
    either side of it is kept. This replaces Blender's hash-based edge search, the slowest step of building a mesh.
    """
    keep = np.asarray(keep, dtype=bool)
    fr, fc = keep.shape
    rows, cols = fr + 1, fc + 1
    used_h = np.zeros((rows, fc), dtype=bool)  # (r, c)-(r, c+1): the quad above or below
    used_h[:-1] |= keep
    used_h[1:] |= keep
    used_v = np.zeros((fr, cols), dtype=bool)  # (r, c)-(r+1, c): the quad left or right
    used_v[:, :-1] |= keep
    used_v[:, 1:] |= keep
    n_h = int(used_h.sum())
    id_h = (np.cumsum(used_h.ravel()) - 1).reshape(rows, fc)
    id_v = (np.cumsum(used_v.ravel()) - 1).reshape(fr, cols) + n_h

    idx = np.arange(rows * cols, dtype=np.int32).reshape(rows, cols)
    edges_h = np.stack([idx[:, :-1][used_h], idx[:, 1:][used_h]], axis=-1)
    edges_v = np.stack([idx[:-1, :][used_v], idx[1:, :][used_v]], axis=-1)
    edges = np.concatenate([edges_h, edges_v]).astype(np.int32, copy=False)

    # Corners in grid_faces order: top-left, bottom-left, bottom-right, top-right.
    face_edges = np.stack([
        id_v[:, :-1][keep],  # top-left -> bottom-left: the left vertical edge
        id_h[1:, :][keep],  # bottom-left -> bottom-right: the bottom horizontal edge
        id_v[:, 1:][keep],  # bottom-right -> top-right: the right vertical edge
        id_h[:-1, :][keep],  # top-right -> top-left: the top horizontal edge
    ], axis=-1).astype(np.int32)
    return edges, face_edges


@dataclass(frozen=True)
class GridMesh:
    """A depth map as mesh arrays, in Blender camera space and metres.

    ``vertices`` (N, 3) float64; ``faces`` (F, 4) int32 indices into ``vertices`` (empty for a point cloud);
    ``edges`` (E, 2) int32, the faces' edges; ``face_edges`` (F, 4) int32, the edge after each face corner;
    ``pixels`` (N, 2) int64 ``(u, v)`` pixel of each vertex; ``uvs`` (N, 2) float64; ``depth`` (N,) float64.
    Only pixels with valid depth become vertices.
    """

    vertices: np.ndarray
    faces: np.ndarray
    pixels: np.ndarray
    uvs: np.ndarray
    depth: np.ndarray
    grid_shape: tuple[int, int]
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int32))
    face_edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int32))

    def vertex_values(self, image: np.ndarray) -> np.ndarray:
        """Per-vertex samples of an H x W (x C) array with the depth's pixel grid (colours, uncertainty)."""
        image = np.asarray(image)
        return image[self.pixels[:, 1], self.pixels[:, 0]]


def build_grid_mesh(
    depth: np.ndarray,
    k: Intrinsics,
    *,
    stride: int = 1,
    faces: bool = True,
    max_relative_jump: float | None = None,
) -> GridMesh:
    """Unproject ``depth`` (metres) and connect neighbouring pixels into quads.

    ``stride`` keeps every n-th pixel in both directions; ``faces=False`` gives a point cloud; faces with an invalid
    corner, or across a depth discontinuity (see :func:`discontinuity_face_mask`), are left out. Vertices with
    invalid depth are dropped and the face indices renumbered.
    """
    depth = np.asarray(depth)
    points = unproject(depth, k, stride)
    rows_idx, cols_idx = subsample_indices(depth.shape[0], stride), subsample_indices(depth.shape[1], stride)
    n_rows, n_cols = len(rows_idx), len(cols_idx)
    d_grid = -points[..., 2]  # NaN where invalid
    valid = np.isfinite(d_grid).reshape(-1)

    if faces and n_rows > 1 and n_cols > 1:
        keep = _grid_face_keep(d_grid, max_relative_jump)
        quads = grid_faces(n_rows, n_cols)[keep.ravel()]
        edges, face_edges = grid_edges(keep)
    else:
        quads = np.zeros((0, 4), dtype=np.int32)
        edges, face_edges = np.zeros((0, 2), dtype=np.int32), np.zeros((0, 4), dtype=np.int32)

    uu, vv = np.meshgrid(cols_idx, rows_idx)
    pixels = np.stack([uu.reshape(-1), vv.reshape(-1)], axis=-1)
    uvs = pixel_uvs(rows_idx, cols_idx, depth.shape[1], depth.shape[0]).reshape(-1, 2)
    vertices, vertex_depth = points.reshape(-1, 3), d_grid.reshape(-1)
    if not valid.all():  # drop invalid vertices: old grid index -> index among the valid ones
        new_index = (np.cumsum(valid) - 1).astype(np.int32)
        quads, edges = new_index[quads], new_index[edges]
        vertices, vertex_depth, pixels, uvs = vertices[valid], vertex_depth[valid], pixels[valid], uvs[valid]
    return GridMesh(
        vertices=vertices,
        faces=quads,
        pixels=pixels.astype(np.int64, copy=False),
        uvs=uvs,
        depth=vertex_depth,
        grid_shape=(n_rows, n_cols),
        edges=edges,
        face_edges=face_edges,
    )
