"""The embedded model: tokenizer, training step, resumable script, and the shipped weights."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import crossgate
from crossgate.embedded import MODEL_NAME, default_model_path
from crossgate.embedded.model import WORDS, build_scheduler, build_text_encoder, build_unet, write_tokenizer
from crossgate.embedded.scenes import training_compositions
from crossgate.embedded.training import EMA, diffusion_loss, drop_captions, make_data, tokenize, vae_loss

ROOT = Path(__file__).resolve().parents[1]
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY_UNET = {
    "block_out_channels": [32, 32],
    "attention_head_dim": [2, 2],
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "transformer_layers_per_block": [1, 1],
}


def test_tokenizer_is_word_level(tmp_path):
    tok = write_tokenizer(tmp_path)
    for word in WORDS:
        assert tok.tokenize(word) == [word + "</w>"], word
    ids = tok("a red circle left of a blue square").input_ids
    assert len(ids) == 10 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(tok.tokenize("purple")) > 1  # unknown words still encode, as pieces


def test_training_step_learns_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    tok = write_tokenizer(tmp_path)
    data = make_data(8, seed=0, compositions=training_compositions())
    assert data.images.shape == (8, 3, 32, 32) and data.captions[0] == ""
    ids = tokenize(tok, data.captions)[data.caption_index]
    text = build_text_encoder(tok, projection_dim=32, **TINY_TEXT)
    unet = build_unet(**TINY_UNET)
    sched = build_scheduler()
    latents = torch.randn(8, 4, 8, 8)
    params = [*unet.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3)
    ema = EMA(unet, decay=0.9)
    before = [p.detach().clone() for p in ema.module.parameters()]

    def loss_at_fixed_noise() -> torch.Tensor:
        return diffusion_loss(unet, text, sched, latents, ids, torch.Generator().manual_seed(1), 0.3)

    losses = []
    for _ in range(8):
        loss = loss_at_fixed_noise()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(unet)
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert any(not torch.equal(a, b) for a, b in zip(before, ema.module.parameters()))
    dropped = drop_captions(torch.arange(1, 1001), 0.1, torch.Generator().manual_seed(0))
    assert 50 < int((dropped == 0).sum()) < 150  # ~10% empty captions for CFG


def test_vae_loss_backpropagates():
    from crossgate.embedded.model import build_vae

    vae = build_vae(block_out_channels=[8, 16, 16], norm_num_groups=8)
    x = make_data(4, seed=1, compositions=training_compositions()).images
    loss = vae_loss(vae, x)
    loss.backward()
    assert torch.isfinite(loss) and vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vae.encode(x).latent_dist.mean.shape == (4, 4, 8, 8)  # f=4: 32x32 -> 8x8x4


def _load_script():
    spec = importlib.util.spec_from_file_location("train_embedded", ROOT / "scripts" / "train_embedded.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_embedded", module)
    spec.loader.exec_module(module)
    return module


def test_training_script_checkpoints_and_resumes(tmp_path):
    script = _load_script()
    common = [
        "--tiny",
        "--work",
        str(tmp_path),
        "--scenes",
        "32",
        "--vae-steps",
        "4",
        "--batch",
        "8",
        "--ckpt-every",
        "2",
        "--eval-every",
        "100",
        "--eval-limit",
        "2",
        "--eval-steps",
        "2",
    ]
    first = script.main([*common, "--steps", "4"])
    assert (
        first["step"] == 4
        and (tmp_path / "unet.pt").exists()
        and (tmp_path / "best" / "model_index.json").exists()
    )
    second = script.main([*common, "--steps", "6", "--resume"])
    assert second["step"] == 6
    assert [h["step"] for h in second["history"]] == [4, 6]  # history carried over from the checkpoint
    assert torch.load(tmp_path / "vae.pt", weights_only=False)["step"] == 4


@pytest.fixture(scope="module")
def shipped_pipe():
    path = default_model_path()
    if path is None:
        pytest.skip("embedded weights not present")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_model_is_small_and_named():
    path = default_model_path()
    assert path is not None and path.name == MODEL_NAME
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert total <= 25 * 1024 * 1024
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert list(path.rglob("*.safetensors")) and not list(path.rglob("*.bin"))


def test_shipped_model_generates_32px_offline(shipped_pipe):
    unet = shipped_pipe.unet
    assert 3e6 <= sum(p.numel() for p in unet.parameters()) <= 8e6
    assert unet.dtype == torch.float32
    gen = torch.Generator().manual_seed(0)
    img = shipped_pipe(
        "a red circle left of a blue square", num_inference_steps=8, generator=gen, output_type="np"
    ).images[0]
    assert img.shape == (32, 32, 3)
    px = img.reshape(-1, 3)
    assert px.mean() > 0.6  # light background
    assert (px[:, 0] - px[:, 2] > 0.4).sum() >= 8 and (px[:, 2] - px[:, 0] > 0.4).sum() >= 8  # red and blue


def test_tgate_on_shipped_model_is_exact_when_gate_not_reached(shipped_pipe):
    steps = 6
    kwargs = {"num_inference_steps": steps, "output_type": "pt"}
    plain = shipped_pipe(
        "a green square above a yellow circle", generator=torch.Generator().manual_seed(3), **kwargs
    ).images
    crossgate.apply(shipped_pipe, crossgate.TGateConfig(gate_step=steps))
    try:
        gated = shipped_pipe(
            "a green square above a yellow circle", generator=torch.Generator().manual_seed(3), **kwargs
        ).images
        stats = crossgate.last_call(shipped_pipe)
    finally:
        crossgate.remove(shipped_pipe)
    assert torch.equal(plain, gated)
    assert stats.num_steps == steps and sum(stats.cross_attention_replays.values()) == 0
