"""metricgold_engine.core.mesh_size: the vertex budget of a depth mesh, against brute force and hand arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metricgold_engine.core import geometry, mesh_size


def brute_force_stride(width: int, height: int, limit: int, min_stride: int = 1) -> int:
    """Independent reference: count the kept pixels with geometry.subsample_indices, stride by stride."""
    s = min_stride
    while len(geometry.subsample_indices(width, s)) * len(geometry.subsample_indices(height, s)) > limit:
        s += 1
    return s


def test_the_6000_x_4000_photo_gets_a_million_vertices_at_most():
    plan = mesh_size.plan_mesh(6000, 4000)
    assert plan.full_vertices == 24_000_000
    # stride 5: 1200 x 800 = 960,000 <= 1e6; stride 4: 1500 x 1000 = 1.5e6 > 1e6
    assert plan.stride == 5 and plan.vertices == 960_000 and plan.limited
    text = plan.describe()
    assert "stride 5 gives 960,000 vertices (limit 1,000,000)" in text and "24,000,000 vertices" in text
    assert "6.2 GB of memory" in text and "960.0 MB .blend" in text


@pytest.mark.parametrize("width,height,limit,min_stride", [
    (6000, 4000, 1_000_000, 1), (4032, 3024, 1_000_000, 1), (1001, 999, 1_000_000, 1), (1001, 1001, 1_000_000, 1),
    (7, 5, 4, 1), (7, 5, 1, 1), (3000, 17, 100, 1), (4000, 3000, 1_000_000, 8), (1, 1, 1, 1),
])
def test_stride_for_limit_is_the_smallest_that_fits(width, height, limit, min_stride):
    s = mesh_size.stride_for_limit(width, height, limit, min_stride)
    assert s == brute_force_stride(width, height, limit, min_stride)
    assert mesh_size.grid_vertex_count(width, height, s) <= limit


def test_random_sizes_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(x) for x in rng.integers(1, 5000, size=2))
        limit = int(rng.integers(1, 2_000_000))
        assert mesh_size.stride_for_limit(w, h, limit) == brute_force_stride(w, h, limit)


def test_within_the_limit_nothing_changes():
    plan = mesh_size.plan_mesh(1024, 768)
    assert (plan.stride, plan.vertices, plan.limited, plan.over_limit) == (1, 786_432, False, False)
    assert plan.describe() == ""
    plan = mesh_size.plan_mesh(6000, 4000, stride=8)  # the user's own stride already fits
    assert (plan.stride, plan.limited, plan.describe()) == (8, False, "")


def test_lifted_limit_builds_everything_and_says_what_it_costs():
    plan = mesh_size.plan_mesh(6000, 4000, limit=None)
    assert (plan.stride, plan.vertices, plan.limited, plan.over_limit) == (1, 24_000_000, False, True)
    assert plan.describe() == ("6000 x 4000 depth, vertex limit off: 24,000,000 vertices, about 6.2 GB of memory "
                               "and a 960.0 MB .blend")
    points = mesh_size.plan_mesh(6000, 4000, stride=2, limit=None, point_cloud=True)
    assert points.vertices == 6_000_000 and "6,000,000 points" in points.describe()


def test_processing_resolution_raises_the_budget():
    # 768 px long side on a 3:2 photo: 768 x 512 pixels, below the default budget
    assert mesh_size.processing_pixel_count(6000, 4000, 768) == 768 * 512
    assert mesh_size.processing_pixel_count(4000, 6000, 768) == 768 * 512  # portrait
    assert mesh_size.vertex_limit(768 * 512) == 1_000_000
    # native resolution: the depth has a pixel's detail everywhere, so no subsampling
    assert mesh_size.processing_pixel_count(6000, 4000, 0) == 24_000_000
    assert mesh_size.vertex_limit(mesh_size.processing_pixel_count(6000, 4000, 0)) == 24_000_000
    assert mesh_size.plan_mesh(6000, 4000, limit=24_000_000).stride == 1
    # 2048 px: 2048 x 1365 = 2,795,520 pixels; stride 3 gives 2000 x 1334 = 2,668,000
    limit = mesh_size.vertex_limit(mesh_size.processing_pixel_count(6000, 4000, 2048))
    assert limit == 2048 * round(4000 * 2048 / 6000) == 2_795_520
    assert mesh_size.plan_mesh(6000, 4000, limit=limit).stride == 3
    assert mesh_size.vertex_limit(None) == mesh_size.DEFAULT_MAX_VERTICES


def test_bad_arguments():
    with pytest.raises(ValueError, match="stride"):
        mesh_size.grid_vertex_count(10, 10, 0)
    with pytest.raises(ValueError, match="size"):
        mesh_size.plan_mesh(0, 10)
    with pytest.raises(ValueError, match="limit"):
        mesh_size.stride_for_limit(10, 10, 0)
    assert mesh_size.grid_vertex_count(10, 7, 3) == math.ceil(10 / 3) * math.ceil(7 / 3)
