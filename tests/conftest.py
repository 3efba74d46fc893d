"""Shared fixtures. The tiny checkpoint is built once per test session through the real code path
(tiny SD2-shaped folder -> init_from_stable_diffusion -> save_pretrained)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Keep CPU tests predictable on the 2-core CI machine.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _timing_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The add-on remembers prediction times: in a temp file during tests, not the user's config."""
    os.environ["METRICGOLD_TIMING_FILE"] = str(tmp_path_factory.mktemp("timing") / "timing.json")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny, randomly initialised MetricGold checkpoint (float32, CPU-friendly, seed 0)."""
    from metricgold_engine.tiny_models import make_tiny_checkpoint

    path = tmp_path_factory.mktemp("models") / "tiny-metricgold"
    make_tiny_checkpoint(path, seed=0, default_processing_resolution=64, default_num_inference_steps=4,
                         default_ensemble_size=2)
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_checkpoint: Path):
    """The tiny checkpoint loaded on the CPU, progress bars off."""
    from metricgold_engine.checkpoint import load_pipeline

    pipe = load_pipeline(tiny_checkpoint, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_depth_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random transformers depth models, one folder per kind (see metricgold_engine.backends.tiny): Depth Pro,
    Depth Anything metric and relative, ZoeDepth. Saved with save_pretrained, model and image processor."""
    from metricgold_engine.backends.tiny import TINY_KINDS, make_tiny_depth_model

    root = tmp_path_factory.mktemp("depth-models")
    return {kind: make_tiny_depth_model(root / kind, kind, seed=0) for kind in TINY_KINDS}


@pytest.fixture(scope="session")
def installed_addon(tmp_path_factory: pytest.TempPathFactory):
    """Blender as a module (bpy): build the extension zip, install it into a temporary extension repository exactly
    as a user does, enable it; yield its package name (bl_ext.<repo>.metricgold). One install per test session."""
    bpy = pytest.importorskip("bpy")
    import importlib

    build = importlib.import_module("build")
    zip_path = build.build(tmp_path_factory.mktemp("dist"))
    repo_dir = tmp_path_factory.mktemp("extensions")
    bpy.ops.preferences.extension_repo_add(
        name="metricgold_test", type="LOCAL", custom_directory=str(repo_dir), use_custom_directory=True)
    repos = bpy.context.preferences.extensions.repos
    repo_index = next(i for i, r in enumerate(repos) if r.name == "metricgold_test")
    module = repos[repo_index].module
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo=module, enable_on_install=True)
    assert result == {"FINISHED"}
    package = f"bl_ext.{module}.metricgold"
    assert package in bpy.context.preferences.addons
    yield package
    bpy.ops.preferences.addon_disable(module=package)  # unregister: closes the workers, cancels a set-up
    repos = bpy.context.preferences.extensions.repos
    bpy.ops.preferences.extension_repo_remove(
        index=next(i for i, r in enumerate(repos) if r.name == "metricgold_test"), remove_files=True)
