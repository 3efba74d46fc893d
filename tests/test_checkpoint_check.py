"""Issue 14, checkpoints: a tampered or half-copied model folder is refused at load, as a whole and before torch is
imported, with one line naming the file and the field."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metricgold_engine.core.errors import CheckpointError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _edit_index(folder: Path, **changes: object) -> None:
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


def _narrow_text_embedding(folder: Path) -> int:
    """Replace the text embedding by one half as wide as the UNet's cross-attention (consistent in itself)."""
    from safetensors.numpy import save_file

    width = json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"] // 2
    config_path = folder / "text_embedding" / "config.json"
    config = json.loads(config_path.read_text())
    config["hidden_size"] = width
    config_path.write_text(json.dumps(config))
    save_file({"embedding": np.zeros((1, config["num_tokens"], width), np.float32)},
              str(folder / "text_embedding" / "diffusion_pytorch_model.safetensors"))
    return width


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


#: name -> (how to break a copy of a good checkpoint, the message expected: file and field)
BAD = {
    "index_null": (lambda m: (m / "model_index.json").write_text("null"),
                   r"model_index\.json: expected a JSON object, got null$"),
    "component_null": (lambda m: _edit_index(m, vae=None),
                       r"model_index\.json: vae: expected \[library, class\] .*got null$"),
    "depth_min_string": (lambda m: _edit_index(m, depth_min="0.1"),
                         r"model_index\.json: depth_min: must be a finite number of metres, got \"0\.1\" \(a string\)$"),
    "depth_min_null": (lambda m: _edit_index(m, depth_min=None),
                       r"model_index\.json: depth_min: must be a finite number of metres, got null$"),
    "depth_min_not_below_max": (lambda m: _edit_index(m, depth_min=100.0, depth_max=100.0),
                                r"model_index\.json: depth_min: must be below depth_max, got depth_min=100\.0, "
                                r"depth_max=100\.0$"),
    "vae_swapped_with_unet": (lambda m: shutil.copy(m / "unet" / "diffusion_pytorch_model.safetensors",
                                                    m / "vae" / "diffusion_pytorch_model.safetensors"),
                              r"vae/diffusion_pytorch_model\.safetensors: no tensor 'encoder\.conv_in\.weight': these are "
                              r"not AutoencoderKL weights \(they look like a UNet's\)$"),
    "depth_vae_swapped_with_text_embedding": (
        lambda m: shutil.copy(m / "text_embedding" / "diffusion_pytorch_model.safetensors",
                              m / "depth_vae" / "diffusion_pytorch_model.safetensors"),
        r"depth_vae/diffusion_pytorch_model\.safetensors: no tensor 'encoder\.conv_in\.weight': these are not "
        r"AutoencoderKL weights \(they look like the text embedding's\)$"),
    "text_embedding_too_narrow": (_narrow_text_embedding,
                                  r"text_embedding/diffusion_pytorch_model\.safetensors: embedding: \d+ wide, but the "
                                  r"UNet's cross_attention_dim is \d+ \(.*unet/config\.json\): the text embedding "
                                  r"belongs to another model$"),
    "steps_string": (lambda m: _edit_index(m, default_num_inference_steps="10"),
                     r"model_index\.json: default_num_inference_steps: must be an integer >= 1, got \"10\" \(a string\)$"),
    "resolution_negative": (lambda m: _edit_index(m, default_processing_resolution=-64),
                            r"model_index\.json: default_processing_resolution: must be an integer >= 0 .*got -64$"),
    "ensemble_float": (lambda m: _edit_index(m, default_ensemble_size=2.5),
                       r"model_index\.json: default_ensemble_size: must be an integer >= 1, got 2\.5$"),
    "spacing_unknown": (lambda m: _edit_index(m, default_timestep_spacing="sideways"),
                        r"model_index\.json: default_timestep_spacing: must be one of .*got \"sideways\" \(a string\)$"),
    "unet_half_copied": (lambda m: _truncate(m / "unet" / "diffusion_pytorch_model.safetensors"),
                         r"unet/diffusion_pytorch_model\.safetensors: cut short: \d+ bytes, but its header describes "
                         r"\d+ \(a half-copied or truncated file; copy it again\)$"),
    "scheduler_config_null": (lambda m: (m / "scheduler" / "scheduler_config.json").write_text("null"),
                              r"scheduler/scheduler_config\.json: expected a JSON object, got null$"),
}


def make_bad_checkpoints(good: Path, where: Path) -> dict[str, tuple[Path, str]]:
    """Copies of ``good``, each broken in one way: name -> (folder, expected message regex)."""
    made = {}
    for name, (breaker, pattern) in BAD.items():
        folder = where / name
        if not folder.exists():
            shutil.copytree(good, folder)
            breaker(folder)
        made[name] = (folder, pattern)
    return made


@pytest.fixture(scope="module")
def bad(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return make_bad_checkpoints(tiny_checkpoint, tmp_path_factory.mktemp("bad-models"))


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_tampered_folder_is_refused_naming_file_and_field(bad, name):
    from metricgold_engine.checkpoint import load_pipeline
    from metricgold_engine.core.checkpoint_check import check_checkpoint_folder

    folder, pattern = bad[name]
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_pipeline(folder, device="cpu")
    assert str(folder) in info.value.message and "\n" not in info.value.message
    with pytest.raises(CheckpointError, match=pattern):
        check_checkpoint_folder(folder)


def test_good_folders_pass_including_the_demo_model(tiny_checkpoint):
    from metricgold_engine.core.checkpoint_check import check_checkpoint_folder
    from metricgold_engine.core.demo_model import DEMO_MODEL_PATH

    for folder in (tiny_checkpoint, DEMO_MODEL_PATH):
        index = check_checkpoint_folder(folder)
        assert index["_class_name"] == "MetricGoldPipeline"


@pytest.mark.parametrize("name", ["component_null", "vae_swapped_with_unet", "unet_half_copied"])
def test_the_worker_refuses_a_bad_model_before_importing_torch(bad, name):
    folder, pattern = bad[name]
    code = ("import sys; from metricgold_engine.worker import main; rc = main(['--model', sys.argv[1]]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 2
    assert proc.stdout == "NO-TORCH\n"  # refused from JSON and headers only: no seconds of torch import
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("metricgold worker: ") and re.search(pattern, lines[0])

    proc = subprocess.run([sys.executable, "-m", "metricgold_engine.worker", "--model", str(folder)],
                          input="", capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_the_client_refuses_a_bad_model_before_starting_a_worker(bad, tmp_path):
    from metricgold_engine.core.client import WorkerClient

    folder, pattern = bad["depth_min_string"]
    python = tmp_path / "no-python"  # never run: the folder is refused first
    with pytest.raises(CheckpointError, match=pattern):
        WorkerClient(python, model=folder)


def test_a_safetensors_header_larger_than_its_file_is_refused(tmp_path):
    from metricgold_engine.core.checkpoint_check import read_safetensors_header

    path = tmp_path / "w.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match=r"w\.safetensors: not a safetensors file, or cut short: its header "
                                              r"claims 1000000000000 bytes in a file of 10$"):
        read_safetensors_header(path)
