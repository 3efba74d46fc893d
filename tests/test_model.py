"""Model building (conv_in widening, init from SD / Marigold), checkpoint saving and checked loading."""

import json
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from metricgold_engine.core.errors import CheckpointError
from metricgold_engine.checkpoint import init_from_stable_diffusion, load_pipeline, save_checkpoint
from metricgold_engine.tiny_models import make_tiny_stable_diffusion
from metricgold_engine.components import widen_conv_in


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return make_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "sd2-tiny", seed=1)


def test_widened_conv_equals_original_on_equal_halves(tiny_sd):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    original = torch.nn.Conv2d(4, unet.conv_in.out_channels, 3, padding=1)
    original.load_state_dict(unet.conv_in.state_dict())
    widen_conv_in(unet)
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    torch.testing.assert_close(unet.conv_in.weight[:, :4], original.weight / 2)
    torch.testing.assert_close(unet.conv_in.weight[:, 4:], original.weight / 2)
    x = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(unet.conv_in(torch.cat([x, x], dim=1)), original(x), atol=1e-6, rtol=1e-5)


def test_init_from_sd_whole_unet_is_equivalent(tiny_sd):
    pipe = init_from_stable_diffusion(tiny_sd, depth_min=0.5, depth_max=50.0)
    sd_unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    x = torch.randn(1, 4, 16, 16)
    emb = pipe.text_embedding(1)
    with torch.no_grad():
        ours = pipe.unet(torch.cat([x, x], 1), 500, encoder_hidden_states=emb).sample
        ref = sd_unet(x, 500, encoder_hidden_states=emb).sample
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert pipe.config.depth_min == 0.5 and pipe.config.depth_max == 50.0
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"


def test_depth_vae_is_an_independent_copy_of_the_image_vae(tiny_sd):
    pipe = init_from_stable_diffusion(tiny_sd)
    for (name, a), (_, b) in zip(pipe.vae.state_dict().items(), pipe.depth_vae.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        next(pipe.depth_vae.parameters()).add_(1.0)
    assert not torch.equal(next(pipe.depth_vae.parameters()), next(pipe.vae.parameters()))


def test_empty_embedding_is_text_encoder_on_bos_eos(tiny_sd):
    pipe = init_from_stable_diffusion(tiny_sd)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder")
    ids = torch.tensor([[tokenizer.bos_token_id, tokenizer.eos_token_id]])  # two tokens, not 77
    with torch.no_grad():
        expected = encoder(input_ids=ids).last_hidden_state
    assert pipe.text_embedding.embedding.shape == (1, 2, encoder.config.hidden_size)
    torch.testing.assert_close(pipe.text_embedding.embedding, expected)


def test_marigold_style_folder_keeps_its_8_channel_unet(tiny_sd, tmp_path):
    marigold = tmp_path / "marigold"
    shutil.copytree(tiny_sd, marigold)
    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet"))
    with torch.no_grad():
        unet.conv_in.weight.normal_()  # trained weights: no longer two equal halves
    unet.save_pretrained(marigold / "unet")
    pipe = init_from_stable_diffusion(marigold)
    assert pipe.unet.config.in_channels == 8
    torch.testing.assert_close(pipe.unet.conv_in.weight, unet.conv_in.weight)


def test_unet_with_unexpected_channels_is_rejected(tiny_sd, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_sd, bad)
    config = json.loads((bad / "unet" / "config.json").read_text())
    config["in_channels"] = 5
    unet = UNet2DConditionModel.from_config(config)
    shutil.rmtree(bad / "unet")
    unet.save_pretrained(bad / "unet")
    with pytest.raises(CheckpointError, match=r"unet: conv_in takes 5 channels"):
        init_from_stable_diffusion(bad)


def test_checkpoint_round_trip(tiny_checkpoint):
    pipe = load_pipeline(tiny_checkpoint, device="cpu")
    assert pipe.config.default_processing_resolution == 64
    assert pipe.config.depth_normalization == "log"
    for name in ("unet", "vae", "depth_vae", "text_embedding"):
        folder = tiny_checkpoint / name
        assert list(folder.glob("*.safetensors")), name
        assert not list(folder.glob("*.bin")), name
    again = load_pipeline(tiny_checkpoint, device="cpu")
    for (k, a), (_, b) in zip(pipe.unet.state_dict().items(), again.unet.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.fixture()
def copy_of(tiny_checkpoint, tmp_path):
    def make(name="model"):
        target = tmp_path / name
        shutil.copytree(tiny_checkpoint, target)
        return target
    return make


def test_load_errors_name_folder_and_part(copy_of, tmp_path, tiny_sd):
    with pytest.raises(CheckpointError, match=r"nowhere: model folder not found"):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        load_pipeline(tmp_path / "file")
    with pytest.raises(CheckpointError, match=r"missing component\(s\) depth_vae, text_embedding"):
        load_pipeline(tiny_sd)  # a plain SD folder is not a MetricGold checkpoint

    m = copy_of("no_depth_vae")
    shutil.rmtree(m / "depth_vae")
    with pytest.raises(CheckpointError, match=r"no_depth_vae/depth_vae: missing component"):
        load_pipeline(m)

    m = copy_of("bin_only")
    for f in (m / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(CheckpointError, match=r"unet: no \.safetensors weights \(\.bin/\.pt weights are not loaded"):
        load_pipeline(m)

    m = copy_of("bad_json")
    (m / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model_index\.json: not valid JSON"):
        load_pipeline(m)


def test_wrong_channel_count_in_unet(copy_of, tiny_sd):
    m = copy_of("four_channel")
    shutil.rmtree(m / "unet")
    shutil.copytree(tiny_sd / "unet", m / "unet")  # SD's 4-channel UNet where MetricGold's 8-channel one belongs
    with pytest.raises(CheckpointError, match=r"unet: conv_in takes 4 input channels; a MetricGold UNet takes 8"):
        load_pipeline(m)


def test_save_checkpoint_is_atomic(tiny_checkpoint, tmp_path, monkeypatch):
    pipe = load_pipeline(tiny_checkpoint, device="cpu")
    target = tmp_path / "ckpt"
    save_checkpoint(pipe, target)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def broken_save(path, **kwargs):
        (path / "unet").mkdir(parents=True)
        (path / "unet" / "partial.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(pipe, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(pipe, target)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folder left behind
    load_pipeline(target, device="cpu")


def test_checkpoint_saved_by_0_1_loads(tmp_path, tiny_checkpoint):
    """Checkpoints written before model.py was split name metricgold_engine.model for the text embedding."""
    import json
    import shutil
    import subprocess
    import sys

    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_checkpoint, legacy)
    index = json.loads((legacy / "model_index.json").read_text())
    assert index["text_embedding"] == ["metricgold_engine.components", "EmptyTextEmbedding"]
    index["text_embedding"] = ["metricgold_engine.model", "EmptyTextEmbedding"]
    (legacy / "model_index.json").write_text(json.dumps(index))
    # A fresh process: nothing has imported metricgold_engine.components yet.
    code = ("import sys; from metricgold_engine import load_pipeline; p = load_pipeline(sys.argv[1], device='cpu'); "
            "print(type(p.text_embedding).__module__)")
    out = subprocess.run([sys.executable, "-c", code, str(legacy)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "metricgold_engine.components"
