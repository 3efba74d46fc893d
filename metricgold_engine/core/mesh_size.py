"""How big a depth mesh gets, and the stride that keeps it at a sensible size (pure arithmetic, no Blender).

A depth map has no finer detail than the resolution the model worked at: a 6000 x 4000 photo processed at 768 px
gives a depth with 24 million pixels but about 0.4 million pixels' worth of information. A mesh with a vertex per
photo pixel then costs gigabytes for nothing. By default the mesh keeps at most :data:`DEFAULT_MAX_VERTICES`
vertices, or the processing resolution's pixel count where that is larger, by picking the subsampling stride
(:func:`plan_mesh`); a caller may lift the limit.

The memory figures were measured with Blender 5.0.1 on a 3000 x 2000 and a 6000 x 4000 depth (peak resident memory
while building, textured mesh; the .blend as saved, uncompressed): see docs/blender.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The default vertex budget of a mesh built from a depth map.
DEFAULT_MAX_VERTICES = 1_000_000
#: Peak bytes of memory per vertex while Blender builds a textured grid mesh (one quad per vertex, UVs, depth).
MESH_BYTES_PER_VERTEX = 260
#: The same for a point cloud (no faces, edges or UVs; colour and radius attributes instead).
POINTS_BYTES_PER_VERTEX = 120
#: Bytes per vertex of a saved .blend (uncompressed) with such a mesh.
MESH_BLEND_BYTES_PER_VERTEX = 40
POINTS_BLEND_BYTES_PER_VERTEX = 36


def grid_vertex_count(width: int, height: int, stride: int = 1) -> int:
    """Vertices of a ``width`` x ``height`` depth kept at every ``stride``-th pixel (all pixels valid)."""
    _check_size(width, height)
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    return math.ceil(width / stride) * math.ceil(height / stride)


def processing_pixel_count(width: int, height: int, processing_resolution: int | None) -> int:
    """Pixels the model worked at for a ``width`` x ``height`` photo: the long side scaled to
    ``processing_resolution`` (0 or None: the photo's own size), the short side in proportion."""
    _check_size(width, height)
    if not processing_resolution:
        return width * height
    if processing_resolution < 0:
        raise ValueError(f"processing resolution must be >= 0, got {processing_resolution}")
    long_side, short_side = max(width, height), min(width, height)
    return int(processing_resolution) * max(1, round(short_side * processing_resolution / long_side))


def vertex_limit(processing_pixels: int | None = None, default: int = DEFAULT_MAX_VERTICES) -> int:
    """The default vertex budget: ``default``, or the processing resolution's pixel count where that is larger."""
    return max(int(default), int(processing_pixels or 0))


def stride_for_limit(width: int, height: int, max_vertices: int, min_stride: int = 1) -> int:
    """The smallest stride >= ``min_stride`` whose grid has at most ``max_vertices`` vertices."""
    if max_vertices < 1:
        raise ValueError(f"the vertex limit must be >= 1, got {max_vertices}")
    # ceil(W/s) * ceil(H/s) <= W*H/s^2 + ...: start at the estimate from the pixel count and walk up.
    stride = max(int(min_stride), math.floor(math.sqrt(width * height / max_vertices)), 1)
    while grid_vertex_count(width, height, stride) > max_vertices:
        stride += 1
    return stride


def estimate_bytes(vertices: int, point_cloud: bool = False) -> int:
    """Peak memory Blender needs to build a mesh (or point cloud) of ``vertices`` vertices."""
    return int(vertices) * (POINTS_BYTES_PER_VERTEX if point_cloud else MESH_BYTES_PER_VERTEX)


def estimate_blend_bytes(vertices: int, point_cloud: bool = False) -> int:
    return int(vertices) * (POINTS_BLEND_BYTES_PER_VERTEX if point_cloud else MESH_BLEND_BYTES_PER_VERTEX)


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@dataclass(frozen=True)
class MeshPlan:
    """The size of the mesh about to be built from a ``width`` x ``height`` depth."""

    width: int
    height: int
    stride: int  # the stride to build with
    requested_stride: int  # the caller's stride (the limit only ever raises it)
    vertices: int  # vertices at ``stride`` (all pixels valid: an upper bound)
    limit: int | None  # the vertex budget; None when the caller lifted it
    full_vertices: int  # vertices at ``requested_stride``
    point_cloud: bool = False

    @property
    def limited(self) -> bool:
        """Whether the limit raised the stride."""
        return self.stride > self.requested_stride

    @property
    def over_limit(self) -> bool:
        """Whether the mesh built at the requested stride would be larger than the default budget."""
        return self.full_vertices > (self.limit if self.limit is not None else DEFAULT_MAX_VERTICES)

    @property
    def bytes(self) -> int:
        return estimate_bytes(self.vertices, self.point_cloud)

    @property
    def full_bytes(self) -> int:
        return estimate_bytes(self.full_vertices, self.point_cloud)

    def describe(self) -> str:
        """One line for a report, or "" when the mesh is within the budget at the requested stride."""
        what = "points" if self.point_cloud else "vertices"
        full = (f"{self.full_vertices:,} {what}, about {format_bytes(self.full_bytes)} of memory and a "
                f"{format_bytes(estimate_blend_bytes(self.full_vertices, self.point_cloud))} .blend")
        if self.limited:
            return (f"{self.width} x {self.height} depth: stride {self.stride} gives {self.vertices:,} {what} "
                    f"(limit {self.limit:,}); without the limit: {full}")
        if self.limit is None and self.over_limit:
            return f"{self.width} x {self.height} depth, vertex limit off: {full}"
        return ""


def plan_mesh(
    width: int,
    height: int,
    *,
    stride: int = 1,
    limit: int | None = DEFAULT_MAX_VERTICES,
    point_cloud: bool = False,
) -> MeshPlan:
    """The stride to build a ``width`` x ``height`` depth with: ``stride``, raised until the mesh has at most
    ``limit`` vertices (``limit=None`` lifts the limit; see :func:`vertex_limit` for the default budget)."""
    full = grid_vertex_count(width, height, stride)
    used = stride if limit is None else stride_for_limit(width, height, limit, min_stride=stride)
    return MeshPlan(int(width), int(height), used, int(stride), grid_vertex_count(width, height, used),
                    None if limit is None else int(limit), full, point_cloud)


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"size must be at least 1 x 1 pixels, got {width} x {height}")
