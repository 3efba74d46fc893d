"""The extension zip and the add-on's static checks: layout, manifest, Blender's own validator, mypy on
fake-bpy-module stubs, and the vendored engine importing without torch/Pillow/OpenEXR."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
build = importlib.import_module("build")


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory) -> Path:
    return build.build(tmp_path_factory.mktemp("dist"))


def test_manifest_fields():
    manifest = tomllib.loads((REPO_ROOT / "blender_manifest.toml").read_text())
    assert manifest["schema_version"] == "1.0.0" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(manifest["permissions"]) == {"files", "network"}  # only what it uses, each with its reason
    assert all(len(reason) <= 64 and not reason.endswith(".") for reason in manifest["permissions"].values())
    assert "Set up worker" in manifest["permissions"]["network"]
    assert "wheels" not in manifest  # the engine wheel is for the worker's environment, never Blender's Python
    import metricgold_engine

    assert manifest["version"] == metricgold_engine.__version__


def test_zip_layout_exact(zip_path):
    assert zip_path.name == "metricgold-0.1.0.zip"
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
        assert zf.testzip() is None
    addon = sorted(p.name for p in (REPO_ROOT / "metricgold_blender").glob("*.py"))
    core = sorted(p.name for p in (REPO_ROOT / "metricgold_engine" / "core").glob("*.py"))
    assert {"__init__.py", "client.py", "depth_io.py", "geometry.py", "protocol.py", "errors.py"} <= set(core)
    vendored = ["_vendor/__init__.py", "_vendor/metricgold_engine/__init__.py"] + [
        f"_vendor/metricgold_engine/core/{n}" for n in core]
    wheel = "engine_wheel/metricgold-0.1.0-py3-none-any.whl"
    assert names == sorted(["blender_manifest.toml", *addon, *vendored, wheel])  # nothing else
    assert "worker_env.py" in addon


def test_zip_holds_the_engine_wheel(zip_path, tmp_path):
    """The wheel Set up worker installs: the whole engine (worker, pipeline, demo model) at the add-on's version."""
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo("engine_wheel/metricgold-0.1.0-py3-none-any.whl")
        assert info.compress_type == zipfile.ZIP_STORED  # a wheel is compressed already
        (tmp_path / "w.whl").write_bytes(zf.read(info))
    print(f"\nzip {zip_path.stat().st_size / 1e6:.1f} MB, engine wheel {info.file_size / 1e6:.1f} MB")
    assert zip_path.stat().st_size < 30e6
    with zipfile.ZipFile(tmp_path / "w.whl") as wheel:
        names = set(wheel.namelist())
        assert wheel.testzip() is None
        metadata = wheel.read("metricgold-0.1.0.dist-info/METADATA").decode()
    assert {"metricgold_engine/worker.py", "metricgold_engine/pipeline.py", "metricgold_engine/core/client.py",
            "metricgold_engine/demo_model/model_index.json"} <= names
    assert "Version: 0.1.0" in metadata and "Requires-Dist: torch" in metadata
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_zip_is_reproducible(zip_path, tmp_path):
    again = build.build(tmp_path)
    assert again.read_bytes() == zip_path.read_bytes()


def test_no_half_written_zip_on_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "zip_entries", lambda: [("a", b"x"), ("b", object())])  # second entry fails
    with pytest.raises(TypeError):
        build.build(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_vendoring_refuses_imports_from_outside_core():
    available = {"protocol", "geometry", "client"}
    with pytest.raises(build.BuildError, match="cannot be vendored"):
        build.check_vendored_imports("m.py", "import metricgold_engine.core.client\n", available)
    with pytest.raises(build.BuildError, match="cannot be vendored"):
        build.check_vendored_imports("m.py", "from metricgold_engine.core import geometry\n", available)
    with pytest.raises(build.BuildError, match="outside metricgold_engine.core"):
        build.check_vendored_imports("m.py", "def f():\n    from ..pipeline import MetricGoldPipeline\n", available)
    with pytest.raises(build.BuildError, match="imports torch at module level"):
        build.check_imports("m.py", "import numpy\nimport torch\n")
    with pytest.raises(build.BuildError, match="imports PIL.Image at module level"):
        build.check_imports("m.py", "try:\n    import PIL.Image\nexcept ImportError:\n    pass\n")
    build.check_imports("m.py", "def f():\n    import torch\n")  # lazy imports are fine
    build.check_vendored_imports("client.py", "from . import protocol\nfrom .geometry import Intrinsics\n", available)
    with pytest.raises(build.BuildError, match=r"client\.py imports \.pipeline, which is not a module of"):
        build.check_vendored_imports("client.py", "def f():\n    from .pipeline import MetricGoldPipeline\n",
                                     available)


def test_blender_extension_validate(zip_path):
    pytest.importorskip("bpy")
    assert build.validate_with_blender(zip_path) is True


def test_vendored_engine_imports_without_torch_pil_openexr(zip_path, tmp_path):
    # Blender's Python has numpy but no torch, Pillow or OpenEXR: block them and import the vendored modules.
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path / "metricgold")
    code = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "PIL", "OpenEXR", "metricgold_engine"}:
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
from metricgold._vendor.metricgold_engine.core import client, geometry, depth_io, protocol, errors
import numpy as np
k = geometry.Intrinsics.from_fov(4, 3, 60.0)
assert geometry.build_grid_mesh(np.ones((3, 4)), k).faces.shape == (6, 4)
depth_io.write_depth_npy(sys.argv[2], np.ones((2, 2)))
assert depth_io.read_depth(sys.argv[2]).shape == (2, 2)
try:
    depth_io.read_depth(sys.argv[2].replace(".npy", ".exr"))
except depth_io.DepthFileError as e:
    assert "no such depth file" in str(e)
print("ok", client.WorkerClient.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(tmp_path / "d.npy")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok WorkerClient"


def test_mypy_with_fake_bpy_module():
    pytest.importorskip("mypy")
    proc = subprocess.run([sys.executable, "-m", "mypy", "metricgold_blender", "build.py"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
