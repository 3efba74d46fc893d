"""Sharding over processes: the split itself, and `accelerate launch` with two CPU processes giving the same files
and numbers as one process (the multi-process runs are slow: two fresh Pythons each loading torch)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metricgold_engine.sharding import Shard, map_sharded

REPO = Path(__file__).resolve().parents[1]


def test_shards_are_disjoint_and_cover_every_item() -> None:
    for n in (0, 1, 5, 8):
        for count in (1, 2, 3):
            parts = [list(Shard(i, count).indices(n)) for i in range(count)]
            assert sorted(sum(parts, [])) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_map_sharded_in_one_process_keeps_order_and_failure_records() -> None:
    items = ["a", "bb", "", "dddd"]
    out = map_sharded(items, lambda i, s: len(s) if s else ("failed", i), Shard(), progress=False)
    assert out == [(0, 1), (1, 2), (2, ("failed", 2)), (3, 4)]


def test_device_of_each_process() -> None:
    class FakeState:
        device = "cuda:1"

    two = Shard(1, 2, FakeState(), 1)
    assert two.device("auto") == "cuda:1" and two.device("cuda") == "cuda:1" and two.device("cpu") == "cpu"
    assert two.device("cuda:0") == "cuda:0"  # an explicit choice is kept
    assert Shard().device("auto") == "auto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: list[str], processes: int) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in one process, or under ``accelerate launch --multi_gpu`` with ``processes`` CPU ones
    (without --multi_gpu accelerate starts a single process on a machine without GPUs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if processes == 1:
        cmd = [sys.executable, "-m", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "-m", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


@pytest.mark.slow
def test_two_process_predict_writes_the_same_bytes_as_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(12, 16), (16, 12), (10, 10), (14, 20), (9, 13)]):  # 5 images: shards of 3 and 2
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    (photos / "broken.png").write_bytes(b"not a png")  # a failure on one process is reported once, by the main one
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"out{processes}"
        result = launch(["metricgold_engine", "predict", str(photos), "--model", str(tiny_checkpoint), "--out",
                         str(out), "--steps", "1", "--ensemble", "2", "--resolution", "16", "--uncertainty",
                         "--formats", "npy,png16,ply", "--device", "cpu"], processes)
        assert result.returncode == 1, result.stderr[-3000:]  # 1: the broken file
        assert result.stderr.count("failed: ") == 1 and "broken.png" in result.stderr
        assert result.stderr.count(" image(s) written to ") == 1  # one summary, from the main process
        assert ("by 2 processes" in result.stderr) == (processes == 2)  # really two processes
        runs[processes] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert len(runs[1]) == 5 * 5  # depth npy, png16, ply, uncertainty, camera json
    assert runs[2].keys() == runs[1].keys()
    assert all(runs[2][name] == runs[1][name] for name in runs[1]), "2-process files differ from 1-process files"


@pytest.mark.slow
def test_two_process_eval_gives_the_numbers_of_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import json

    from fixtures_data import make_nyuv2
    from metricgold_engine.tiny_models import make_tiny_checkpoint

    make_nyuv2(tmp_path / "nyu", n=3)  # shards of 2 and 1 images
    other = make_tiny_checkpoint(tmp_path / "tiny-seed1", seed=1)
    tables = {}
    for processes in (1, 2):
        out = tmp_path / f"res{processes}"
        result = launch(["trainer", "eval", "--model", str(tiny_checkpoint), "--model", str(other), "--dataset",
                         "nyuv2", "--data-root", str(tmp_path / "nyu"), "--steps", "1", "--ensemble", "1",
                         "--resolution", "32", "--device", "cpu", "--dtype", "float32", "--out", str(out)],
                        processes)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("Metric depth as predicted") == 1  # printed by the main process only
        tables[processes] = json.loads((out / "metrics.json").read_text())
    one, two = tables[1], tables[2]
    assert (one["processes"], two["processes"]) == (1, 2)
    for a, b in zip(one["models"], two["models"], strict=True):
        assert a["model"] == b["model"]
        assert a["metrics"] == b["metrics"]  # exactly: the same per-image numbers averaged in the same order
        assert [(r["name"], r["metrics"]) for r in a["per_image"]] == [(r["name"], r["metrics"]) for r in b["per_image"]]
