"""The joint-attention embedded model crossgate-mmdit-32: its training pieces and the shipped weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import crossgate
from crossgate.embedded import MODELS, default_model_path, model_path
from crossgate.embedded.mmdit import (
    T5_TOKENS,
    TEXT_2_CONFIG,
    TEXT_CONFIG,
    build_t5_stand_in,
    build_text_encoder,
    build_transformer,
    encode_text,
    zero_token_multiplicity,
)
from crossgate.embedded.model import write_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("train_mmdit", ROOT / "scripts" / "train_embedded_mmdit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_weighted_zero_token_computes_what_the_pipelines_256_do(tmp_path):
    """The training shortcut: identical zero tokens act as one key of multiplicity 256 (exact)."""
    tokenizer = write_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    encoders = (build_text_encoder(tokenizer, TEXT_CONFIG), build_text_encoder(tokenizer, TEXT_2_CONFIG))
    transformer = build_transformer(num_layers=2).eval()
    ids = tokenizer(
        ["a red circle left of a blue square", ""], padding="max_length", return_tensors="pt"
    ).input_ids
    latents, t = torch.randn(2, 4, 8, 8), torch.tensor([700.0, 300.0])
    with torch.no_grad():
        embeds, pooled = encode_text(encoders, ids, T5_TOKENS)
        full = transformer(
            hidden_states=latents, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled
        )
        embeds, pooled = encode_text(encoders, ids, 1)
        with zero_token_multiplicity(T5_TOKENS):
            short = transformer(
                hidden_states=latents, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled
            )
        plain_one = transformer(
            hidden_states=latents, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled
        )
    torch.testing.assert_close(short.sample, full.sample, rtol=0, atol=1e-5)
    assert (plain_one.sample - full.sample).abs().max() > 1e-3  # without the weight it is another function


def test_the_t5_stand_in_returns_exact_zeros():
    encoder, tokenizer = build_t5_stand_in()
    ids = tokenizer(
        ["a red circle"], padding="max_length", max_length=T5_TOKENS, return_tensors="pt"
    ).input_ids
    out = encoder(ids).last_hidden_state
    assert out.shape == (1, T5_TOKENS, TEXT_CONFIG["hidden_size"] + TEXT_2_CONFIG["hidden_size"])
    assert torch.equal(out, torch.zeros_like(out))


def test_training_script_checkpoints_resumes_and_exports_a_loadable_pipeline(tmp_path):
    script = _script()
    common = ["--tiny", "--work", str(tmp_path), "--scenes", "32", "--batch", "8", "--ckpt-every", "2"]
    common += ["--eval-every", "100", "--eval-limit", "2", "--eval-steps", "2"]
    first = script.main([*common, "--steps", "3"])
    assert first["step"] == 3 and (tmp_path / "mmdit.pt").exists()
    second = script.main([*common, "--steps", "5", "--resume"])
    assert second["step"] == 5 and [h["step"] for h in second["history"]] == [3, 5]
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "best"), local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    crossgate.check(pipe)  # a joint-attention pipeline crossgate accepts


@pytest.fixture(scope="module")
def shipped():
    path = model_path("mmdit")
    if path is None:
        pytest.skip("crossgate-mmdit-32 weights not present")
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_models_are_named_and_together_under_50_mb(shipped):
    path = model_path("mmdit")
    assert path.name == MODELS["mmdit"] and model_path("crossgate-mmdit-32") == path
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    total = sum(f.stat().st_size for p in (path, default_model_path()) for f in p.rglob("*") if f.is_file())
    assert total <= 50 * 1024 * 1024
    assert list(path.rglob("*.safetensors")) and not list(path.rglob("*.bin"))


def test_shipped_model_is_gated_exactly_before_the_gate_and_freezes_after(shipped):
    kwargs = {"num_inference_steps": 6, "output_type": "pt", "guidance_scale": 4.0}
    prompt = "a green square above a yellow circle"
    plain = shipped(prompt, generator=torch.Generator().manual_seed(3), **kwargs).images
    with crossgate.enabled(shipped, gate_step=6):
        assert torch.equal(
            shipped(prompt, generator=torch.Generator().manual_seed(3), **kwargs).images, plain
        )
    with crossgate.enabled(shipped, gate_step=3):
        gated = shipped(prompt, generator=torch.Generator().manual_seed(3), **kwargs).images
        stats = crossgate.last_call(shipped)
    assert gated.shape == (1, 3, 32, 32) and not torch.equal(gated, plain)
    assert stats.denoiser_batches == [2, 2, 2, 1, 1, 1] and set(stats.text_stream_replays.values()) == {3}


def test_short_names_resolve_in_the_loader():
    from crossgate.loading import embedded_model

    assert embedded_model("shapes") == str(default_model_path())
    assert embedded_model("nope") is None


def test_the_short_name_works_in_the_app_and_the_cli(shipped, tmp_path, capsys):
    from crossgate.app.runner import load_model
    from crossgate.cli import main

    pipe, label = load_model("mmdit", device="cpu")
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and label == "mmdit"
    out = tmp_path / "g.png"
    assert (
        main(
            [
                "generate",
                "a red circle left of a blue square",
                "--model",
                "mmdit",
                "--steps",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.is_file()
