"""Video and image sequences (issue 16): frame sources, the pipeline's warm start, log-depth smoothing, the
sequence run (numbering, camera, resume, cancel), CLI and worker end to end. Tiny frames, 1-2 steps."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metricgold_engine.core.errors import ImageLoadError, InvalidParams, PredictionCancelled
from metricgold_engine.sequence import (
    ema_log_depth,
    natural_key,
    open_sequence,
    predict_sequence,
    sequence_name,
    smooth_log_depth,
)

W, H = 32, 24  # even sizes: yuv420p video


def frame_array(i: int) -> np.ndarray:
    """A gradient with a bright bar moving right by 4 px a frame."""
    a = np.zeros((H, W, 3), np.uint8)
    a[..., 0] = (np.arange(W) * 8)[None, :]
    a[..., 1] = (np.arange(H) * 10)[:, None]
    a[:, 4 * i: 4 * i + 6, 2] = 255
    return a


def write_video(path: Path, n: int = 4, fps: int = 12) -> Path:
    av = pytest.importorskip("av")
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.bit_rate = 2_000_000
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_array(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frames(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(frame_array(i)).save(folder / name)
    return folder


@pytest.fixture()
def tiny_estimator(tiny_pipeline):
    from metricgold_engine.backends.metricgold import MetricGoldEstimator

    return MetricGoldEstimator(tiny_pipeline, "tiny")


OPTS = {"num_inference_steps": 2, "ensemble_size": 1, "processing_resolution": 0}


# ---------------------------------------------------------------------------------------------- frame sources


def test_natural_order_patterns_and_names(tmp_path):
    assert sorted(["f10.png", "f2.png", "F1.png"], key=natural_key) == ["F1.png", "f2.png", "f10.png"]
    folder = write_frames(tmp_path / "shots", ["f10.png", "f2.png", "f1.png"])
    seq = open_sequence(folder)
    assert [p.name for p in seq.frame_files()] == ["f1.png", "f2.png", "f10.png"]
    assert len(seq) == 3 and seq.fps is None and seq.name == "shots"
    np.testing.assert_array_equal(np.asarray(seq.read_frame(1)), frame_array(1))  # f2.png was written second

    write_frames(tmp_path / "p", ["frame_0007.png", "frame_0009.png", "frame_0008.png", "other_0001.png"])
    pat = open_sequence(tmp_path / "p" / "frame_%04d.png", fps=25)
    assert [p.name for p in pat.frame_files()] == ["frame_0007.png", "frame_0008.png", "frame_0009.png"]
    assert pat.fps == 25.0 and pat.name == "frame"
    assert sequence_name("a/clip.mp4") == "clip"

    with pytest.raises(ImageLoadError, match="no file matches"):
        open_sequence(tmp_path / "p" / "nothing_%03d.png")
    with pytest.raises(ImageLoadError, match="file not found"):
        open_sequence(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageLoadError, match="no images"):
        open_sequence(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageLoadError, match="not a video"):
        open_sequence(tmp_path / "notes.txt")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ImageLoadError, match="broken.mp4"):
        open_sequence(tmp_path / "broken.mp4")


def test_video_frames_fps_and_read_frame(tmp_path):
    seq = open_sequence(write_video(tmp_path / "clip.mp4", n=5, fps=12))
    assert len(seq) == 5 and seq.fps == pytest.approx(12.0) and seq.name == "clip"
    frames = list(seq.frames())
    assert [i for i, _ in frames] == list(range(5))
    for i, image in frames:
        assert image.mode == "RGB" and image.size == (W, H)
        # lossy codec: close to the frame that was encoded, and nearer to it than to its neighbours
        err = np.abs(np.asarray(image, np.float64) - frame_array(i)).mean()
        assert err < 12, (i, err)
        if i + 1 < 5:
            assert err < np.abs(np.asarray(image, np.float64) - frame_array(i + 1)).mean()
    np.testing.assert_array_equal(np.asarray(seq.read_frame(3)), np.asarray(frames[3][1]))


# ---------------------------------------------------------------------------------------------- smoothing


def test_ema_log_depth_by_hand():
    a = 0.25
    d1 = np.array([[1.0, 2.0, np.nan]])
    d2 = np.array([[4.0, 0.0, 3.0]])  # 0 = invalid
    s1 = ema_log_depth(None, d1, a)
    np.testing.assert_allclose(s1[0, :2], [0.0, math.log(2.0)])
    assert np.isnan(s1[0, 2])
    s2 = ema_log_depth(s1, d2, a)
    # pixel 0: 0.25 ln 4 + 0.75 ln 1 = 0.5 ln 2; pixel 1: new invalid -> keeps ln 2; pixel 2: old unknown -> ln 3
    np.testing.assert_allclose(s2[0], [0.5 * math.log(2.0), math.log(2.0), math.log(3.0)])
    seq = smooth_log_depth([d1, d2], a)
    np.testing.assert_allclose(seq[1, 0], [math.sqrt(2.0), 2.0, 3.0])
    np.testing.assert_allclose(smooth_log_depth([d2[:, :1], d1[:, :1]], 1.0)[:, 0, 0], [4.0, 1.0])  # alpha 1 = raw
    with pytest.raises(InvalidParams, match="smoothing_alpha"):
        ema_log_depth(None, d1, 0.0)


# ---------------------------------------------------------------------------------------------- warm start


def test_warm_start_strength_one_is_independent_and_less_differs(tiny_pipeline):
    image = frame_array(0)
    plain = tiny_pipeline(image, seed=3, **OPTS)
    assert plain.depth_latent.shape[0] == 1
    prev = tiny_pipeline(frame_array(1), seed=3, **OPTS).depth_latent
    same = tiny_pipeline(image, seed=3, depth_latent_init=prev, denoise_strength=1.0, **OPTS)
    np.testing.assert_array_equal(same.depth, plain.depth)
    warm = tiny_pipeline(image, seed=3, depth_latent_init=prev, denoise_strength=0.5, **OPTS)
    assert np.abs(np.log(warm.depth) - np.log(plain.depth)).max() > 1e-4
    assert warm.settings["denoise_strength"] == 0.5

    with pytest.raises(InvalidParams, match="needs depth_latent_init"):
        tiny_pipeline(image, denoise_strength=0.5, **OPTS)
    with pytest.raises(InvalidParams, match="denoise_strength"):
        tiny_pipeline(image, depth_latent_init=prev, denoise_strength=1.5, **OPTS)
    with pytest.raises(InvalidParams, match="depth_latent_init must have shape"):
        tiny_pipeline(image, depth_latent_init=prev[:, :, :2], denoise_strength=0.5, **OPTS)


def test_warm_start_first_unet_input_by_hand(tiny_pipeline):
    """SDEdit by hand in float64: 2 trailing steps at strength 0.5 run the last 2 steps of a 4-step schedule
    (t = 499, 249), and the UNet first sees sqrt(abar) * prev + sqrt(1 - abar) * noise at t = 499."""
    image = frame_array(0)
    prev = torch.randn(1, 4, H // tiny_pipeline.vae_scale_factor, W // tiny_pipeline.vae_scale_factor,
                       generator=torch.Generator().manual_seed(1))
    seen: list[tuple[int, torch.Tensor]] = []

    def hook(module, args, kwargs):
        seen.append((int(args[1]), args[0][:, 4:].double().clone()))

    handle = tiny_pipeline.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        tiny_pipeline(image, seed=5, depth_latent_init=prev, denoise_strength=0.5, timestep_spacing="trailing",
                      **OPTS)
    finally:
        handle.remove()
    assert [t for t, _ in seen] == [499, 249]
    noise = torch.randn(prev.shape, generator=torch.Generator().manual_seed(5)).double()
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # scaled_linear
    abar = torch.cumprod(1 - betas, 0)[499]
    expected = abar.sqrt() * prev.double() + (1 - abar).sqrt() * noise
    torch.testing.assert_close(seen[0][1], expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- sequence runs


def test_sequence_files_camera_and_independent_frames(tmp_path, tiny_estimator, tiny_pipeline):
    src = write_frames(tmp_path / "shots", [f"s{i}.png" for i in range(1, 4)])
    out = tmp_path / "out"
    seen: list[tuple[str, int, int]] = []
    result = predict_sequence(tiny_estimator, src, out, formats=["exr", "npy"], fps=24,
                              progress=lambda *p: seen.append(p), **OPTS)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["shots_camera.json"] + [f"shots_depth_00000{k}.{e}" for k in (1, 2, 3) for e in ("exr", "npy")]
    assert result.written == [1, 2, 3] and result.skipped == []
    assert [p for p in seen if p[0] == "frame"] == [("frame", 1, 3), ("frame", 2, 3), ("frame", 3, 3)]
    assert ("denoise", 2, 2) in seen
    cam = json.loads((out / "shots_camera.json").read_text())
    assert cam["frame_count"] == 3 and cam["first_frame"] == 1 and cam["fps"] == 24.0
    assert cam["depth_files"] == "shots_depth_######.exr" and (cam["width"], cam["height"]) == (W, H)
    assert cam["focal_source"] == "default" and cam["temporal"] == {"denoise_strength": None, "smoothing_alpha": None}
    from metricgold_engine.core.depth_io import read_depth

    for k in (1, 2, 3):  # strength 1: each frame is the photo's own prediction with the shared seed 0
        expected = tiny_pipeline(frame_array(k - 1), seed=0, **OPTS).depth
        np.testing.assert_array_equal(np.load(out / f"shots_depth_00000{k}.npy"), expected)
        np.testing.assert_allclose(read_depth(out / f"shots_depth_00000{k}.exr"), expected, rtol=1e-6)


def test_resume_skips_done_frames(tmp_path, tiny_estimator):
    src = write_frames(tmp_path / "shots", [f"s{i}.png" for i in range(1, 5)])
    out = tmp_path / "out"
    predict_sequence(tiny_estimator, src, out, **OPTS)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.exr")}
    (out / "shots_depth_000003.exr").unlink()
    result = predict_sequence(tiny_estimator, src, out, **OPTS)
    assert result.written == [3] and result.skipped == [1, 2, 4]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.exr")}
    assert {k: v for k, v in after.items() if k != "shots_depth_000003.exr"} == \
        {k: v for k, v in before.items() if k != "shots_depth_000003.exr"}


@pytest.mark.parametrize("stop_stage", ["frame", "denoise"])
def test_cancel_mid_sequence_then_resume_equals_uninterrupted(tmp_path, tiny_estimator, stop_stage):
    """Stopped after frame 2 (between frames) or in frame 3's first step: frames 1-2 stay, nothing of frame 3 is
    left; the rerun continues the warm-start and smoothing chain from frame 2's saved state, so its frames equal
    an uninterrupted run's."""
    src = write_frames(tmp_path / "shots", [f"s{i}.png" for i in range(1, 5)])
    kw = dict(formats=["npy"], denoise_strength=0.6, smoothing_alpha=0.5, **OPTS)
    full = tmp_path / "full"
    predict_sequence(tiny_estimator, src, full, **kw)
    frames_done = []

    def progress(stage, step, total):
        if stage == "frame":
            frames_done.append(step)
        if (stage == "frame" and step == 2) or (stage == "denoise" and len(frames_done) == 2):
            raise PredictionCancelled("stop")

    out = tmp_path / "out"
    with pytest.raises(PredictionCancelled):
        predict_sequence(tiny_estimator, src, out, progress=progress, **kw)
    assert sorted(p.name for p in out.glob("shots_depth_*")) == ["shots_depth_000001.npy", "shots_depth_000002.npy"]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    result = predict_sequence(tiny_estimator, src, out, **kw)
    assert result.written == [3, 4] and result.skipped == [1, 2]
    for k in (1, 2, 3, 4):
        np.testing.assert_array_equal(np.load(out / f"shots_depth_00000{k}.npy"),
                                      np.load(full / f"shots_depth_00000{k}.npy"))
    # and the chain matters: frame 3 predicted afresh (no saved state) differs
    (out / ".shots_sequence_state.npz").unlink()
    (out / "shots_depth_000003.npy").unlink()
    predict_sequence(tiny_estimator, src, out, **kw)
    assert np.abs(np.load(out / "shots_depth_000003.npy") - np.load(full / "shots_depth_000003.npy")).max() > 1e-6


def test_sequence_errors(tmp_path, tiny_estimator):
    src = write_frames(tmp_path / "shots", ["a1.png", "a2.png"])
    Image.fromarray(frame_array(0)[:, :16]).save(src / "a3.png")
    with pytest.raises(ImageLoadError, match="frame 3 is 16 x 24, but the first frame is 32 x 24"):
        predict_sequence(tiny_estimator, src, tmp_path / "out", **OPTS)
    with pytest.raises(InvalidParams, match="formats"):
        predict_sequence(tiny_estimator, src, tmp_path / "out", formats=["tiff"], **OPTS)

    class OnePass:  # any other backend: no warm start
        kind = "depth_pro"

    with pytest.raises(InvalidParams, match="MetricGold models only"):
        predict_sequence(OnePass(), src, tmp_path / "out", denoise_strength=0.5)


# ---------------------------------------------------------------------------------------------- CLI and worker


def test_cli_video_end_to_end(tmp_path, tiny_checkpoint):
    from metricgold_engine import cli

    clip = write_video(tmp_path / "clip.mp4", n=3, fps=10)
    out = tmp_path / "out"
    args = ["predict", str(clip), "--out", str(out), "--model", str(tiny_checkpoint), "--device", "cpu",
            "--steps", "1", "--ensemble", "1", "--resolution", "0", "--temporal-strength", "0.5", "--smooth", "0.8",
            "--formats", "exr,png16"]
    assert cli.main(args) == 0
    assert sorted(p.name for p in out.glob("clip_depth*")) == sorted(
        [f"clip_depth_00000{k}.exr" for k in (1, 2, 3)] + [f"clip_depth16_00000{k}.png" for k in (1, 2, 3)])
    cam = json.loads((out / "clip_camera.json").read_text())
    assert cam["fps"] == pytest.approx(10.0) and cam["frame_count"] == 3
    assert cam["temporal"] == {"denoise_strength": 0.5, "smoothing_alpha": 0.8}
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("clip_depth*")}
    assert cli.main(args) == 0  # resume: nothing left to do, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in out.glob("clip_depth*")} == mtimes
    # a folder needs --sequence; a pattern or video does not
    assert cli.is_sequence_request(cli.build_parser().parse_args(["predict", "f_%03d.png", "--out", "o"]))
    assert not cli.is_sequence_request(cli.build_parser().parse_args(["predict", str(tmp_path), "--out", "o"]))
    assert cli.main(["predict", str(tmp_path), "--out", str(tmp_path / "o2"), "--smooth", "0.5"]) == 2  # photos


def test_worker_predict_sequence_progress_cancel_resume(tmp_path, tiny_checkpoint):
    import sys

    from metricgold_engine.core.client import WorkerClient

    src = write_frames(tmp_path / "shots", [f"s{i}.png" for i in range(1, 5)])
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    with WorkerClient(sys.executable, model=tiny_checkpoint, device="cpu", env=env) as worker:
        stop = threading.Event()
        stages = []

        def on_progress(p):
            stages.append((p.stage, p.step, p.total))
            if p.stage == "frame" and p.step == 2:
                stop.set()  # cancel once two frames are written

        with pytest.raises(PredictionCancelled):
            worker.predict_sequence(src, out, cancel=stop, on_progress=on_progress, denoise_strength=0.5,
                                    num_inference_steps=2, ensemble_size=1, processing_resolution=0,
                                    formats=["npy"])
        done = sorted(p.name for p in out.glob("shots_depth_*.npy"))
        assert done[:2] == ["shots_depth_000001.npy", "shots_depth_000002.npy"] and len(done) < 4
        result = worker.predict_sequence(src, out, denoise_strength=0.5, num_inference_steps=2, ensemble_size=1,
                                         processing_resolution=0, formats=["npy"])
        assert result["frame_count"] == 4 and result["written"] == 4 - len(done)
        assert result["skipped"] == len(done) and result["depth_pattern"] == "shots_depth_######.exr"
        assert result["camera"]["frame_count"] == 4 and result["camera"]["temporal"]["denoise_strength"] == 0.5
        assert sorted(p.name for p in out.glob("shots_depth_*.npy")) == [f"shots_depth_00000{k}.npy" for k in range(1, 5)]
        assert ("frame", 1, 4) in stages and any(s[0] == "denoise" for s in stages)
        with pytest.raises(TypeError, match="formats"):
            worker.predict_sequence(src, out, formats=["gif"])
        with pytest.raises(ImageLoadError, match="missing.mp4"):
            worker.predict_sequence(tmp_path / "missing.mp4", out)


def test_protocol_and_engine_agree_on_formats():
    from metricgold_engine.core import protocol
    from metricgold_engine.sequence import SEQUENCE_FORMATS

    assert set(protocol.SEQUENCE_FORMATS) == set(SEQUENCE_FORMATS)
    assert protocol.check_params("predict_sequence", {"source": "a.mp4", "output_dir": "o"})["formats"] == ["exr"]
    with pytest.raises(protocol.ProtocolError, match="denoise_strength"):
        protocol.check_params("predict_sequence", {"source": "a.mp4", "output_dir": "o", "denoise_strength": 0})
    with pytest.raises(protocol.ProtocolError, match="name"):
        protocol.check_params("predict_sequence", {"source": "a.mp4", "output_dir": "o", "name": "../x"})
