"""Train the joint-attention embedded model crossgate-mmdit-32 (a miniature SD3) and write its folder.

Reuses the shipped UNet model's VAE and tokenizer recipe (same scenes, same latents); trains the
SD3 transformer and both CLIP text encoders jointly with rectified flow, 10% empty captions (CFG),
extra high-noise timesteps and EMA; evaluates the EMA weights on the held-out captions every
--eval-every steps and exports the best as a StableDiffusion3Pipeline folder. Seeded, resumable
(--resume continues from <work>/mmdit.pt), stops cleanly at --time-limit.

    nice -n 10 python scripts/train_embedded_mmdit.py --work runs/mmdit --ship
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusion3Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crossgate.embedded import default_model_path
from crossgate.embedded.mmdit import (
    MODEL_NAME,
    T5_TOKENS,
    TEXT_2_CONFIG,
    TEXT_CONFIG,
    build_scheduler,
    build_t5_stand_in,
    build_text_encoder,
    build_transformer,
    encode_text,
    flow_loss,
    prepare_vae,
    zero_token_multiplicity,
)
from crossgate.embedded.model import write_tokenizer
from crossgate.embedded.scenes import held_out_compositions, training_compositions
from crossgate.embedded.training import EMA, drop_captions, encode_means, make_data, tokenize
from embedded_detect import evaluate
from train_embedded import log, save_atomic  # the UNet model's script: same logging, same checkpoints

SHIP_DIR = Path(__file__).resolve().parents[1] / "src" / "crossgate" / "embedded" / MODEL_NAME
TINY = {"num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2, "caption_projection_dim": 16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/mmdit"), help="checkpoints and logs")
    p.add_argument("--ship", action="store_true", help=f"copy the best export to {SHIP_DIR}")
    p.add_argument("--resume", action="store_true", help="continue from <work>/mmdit.pt")
    p.add_argument("--vae", type=Path, default=None, help="VAE folder (default: the shipped UNet model's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=60000)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--schedule-steps", type=int, default=10000, help="horizon of the cosine lr decay")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--high-fraction", type=float, default=0.3)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate only the first N held-out captions")
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=0.0, help="minutes; checkpoint, export and stop")
    p.add_argument("--tiny", action="store_true", help="tiny transformer (tests)")
    return p.parse_args(argv)


def assemble(vae, encoders, tokenizer, transformer) -> StableDiffusion3Pipeline:
    t5, t5_tokenizer = build_t5_stand_in()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=build_scheduler(),
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=tokenizer,
        text_encoder_2=encoders[1],
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export(path: Path, vae, encoders, tokenizer, transformer) -> None:
    """Write a StableDiffusion3Pipeline folder: transformer and VAE stored fp16 (loaded as fp32)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe = assemble(
        copy.deepcopy(vae).cpu().half(),
        [copy.deepcopy(e).cpu().float() for e in encoders],
        tokenizer,
        copy.deepcopy(transformer).cpu().half(),
    )
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)


def check_multiplicity(transformer, encoders, ids: torch.Tensor, latents: torch.Tensor) -> float:
    """Max |difference| between the pipeline's 256 zero tokens and the training's one weighted token."""
    with torch.no_grad():
        t = torch.full((len(ids),), 700.0)
        embeds, pooled = encode_text(encoders, ids, T5_TOKENS)
        full = transformer(
            hidden_states=latents, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled
        )
        embeds, pooled = encode_text(encoders, ids, 1)
        with zero_token_multiplicity(T5_TOKENS):
            short = transformer(
                hidden_states=latents, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled
            )
    return (full.sample - short.sample).abs().max().item()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    deadline = time.time() + args.time_limit * 60 if args.time_limit > 0 else 0.0
    args.work.mkdir(parents=True, exist_ok=True)
    log("command: python scripts/train_embedded_mmdit.py " + " ".join(sys.argv[1:] if argv is None else argv))

    vae_dir = args.vae or (default_model_path() / "vae")
    vae = prepare_vae(AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).float()).to(device)
    vae.eval().requires_grad_(False)
    t0 = time.time()
    data = make_data(args.scenes, args.seed, training_compositions())
    latents = (encode_means(vae, data.images.to(device)) * vae.config.scaling_factor).float()
    log(
        f"rendered and encoded {len(latents)} scenes in {time.time() - t0:.0f}s; latent std {latents.std():.3f}"
    )
    held = held_out_compositions()

    tokenizer = write_tokenizer(args.work / "tokenizer")
    ids = tokenize(tokenizer, data.captions).to(device)
    torch.manual_seed(args.seed + 2)
    encoders = [build_text_encoder(tokenizer, TEXT_CONFIG), build_text_encoder(tokenizer, TEXT_2_CONFIG)]
    encoders = [e.to(device) for e in encoders]
    transformer = build_transformer(**(TINY if args.tiny else {})).to(device)
    gap = check_multiplicity(transformer, encoders, ids[:4], latents[:4])
    log(f"one weighted zero token vs {T5_TOKENS} zero tokens: max |diff| {gap:.2e}")
    if gap > 1e-3:
        raise SystemExit("the zero-token shortcut does not match the pipeline's encoding; not training")

    params = [p for m in (transformer, *encoders) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    emas = [EMA(m, args.ema) for m in (transformer, *encoders)]
    gen = torch.Generator().manual_seed(args.seed + 3)
    step, best, history = 0, None, []
    path = args.work / "mmdit.pt"
    if args.resume and path.exists():
        st = torch.load(path, map_location=device, weights_only=False)
        for m, s in zip((transformer, *encoders), st["models"]):
            m.load_state_dict(s)
        for e, s in zip(emas, st["emas"]):
            e.load_state_dict(s)
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        step, best, history = st["step"], st["best"], st["history"]
        log(f"resumed at step {step}")
    n = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (transformer, *encoders)]
    log(f"transformer {n[0]:.2f}M params, text encoders {n[1]:.2f}M + {n[2]:.2f}M")

    def checkpoint() -> None:
        save_atomic(
            {
                "models": [m.state_dict() for m in (transformer, *encoders)],
                "emas": [e.state_dict() for e in emas],
                "opt": opt.state_dict(),
                "gen": gen.get_state(),
                "step": step,
                "best": best,
                "history": history,
            },
            path,
        )

    def evaluate_and_export() -> None:
        nonlocal best
        ema_t, ema_1, ema_2 = (e.module for e in emas)
        pipe = assemble(vae, [ema_1, ema_2], tokenizer, ema_t)
        with torch.random.fork_rng(devices=[]):
            m = evaluate(pipe, held[: args.eval_limit or None], [10_000], steps=args.eval_steps)
        score = 0.5 * m["object_acc"] + m["relation_acc"] - 0.5 * m["flipped_acc"]
        history.append({"step": step, "minutes": round((time.time() - t_start) / 60, 1), **m})
        log(f"eval step {step}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()))
        export(args.work / "last", vae, [ema_1, ema_2], tokenizer, ema_t)
        if best is None or score > best["score"]:
            best = {"step": step, "score": score, **m}
            export(args.work / "best", vae, [ema_1, ema_2], tokenizer, ema_t)
            log(f"new best at step {step} (score {score:.1f})")
        (args.work / "history.json").write_text(json.dumps({"best": best, "history": history}, indent=1))

    t_start, c_start = time.time(), time.process_time()
    for m in (transformer, *encoders):
        m.train()
    losses: list[float] = []
    while step < args.steps:
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        cap = drop_captions(data.caption_index[idx], args.cfg_drop, gen)
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * (0.55 + 0.45 * math.cos(math.pi * min(step / args.schedule_steps, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        embeds, pooled = encode_text(encoders, ids[cap.to(device)], 1)
        with zero_token_multiplicity(T5_TOKENS):
            loss = flow_loss(transformer, latents[idx.to(device)], embeds, pooled, gen, args.high_fraction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for e, m in zip(emas, (transformer, *encoders)):
            e.update(m)
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            el, cpu = time.time() - t_start, time.process_time() - c_start
            log(
                f"step {step}/{args.steps} loss {sum(losses[-100:]) / 100:.4f} lr {lr:.2e} ({el:.0f}s, cpu {cpu:.0f}s)"
            )
        timed_out = bool(deadline) and time.time() > deadline
        if step % args.eval_every == 0 or step == args.steps or timed_out:
            evaluate_and_export()
        if step % args.ckpt_every == 0 or step == args.steps or timed_out:
            checkpoint()
        if timed_out:
            log(f"time limit reached at step {step}; rerun with --resume to continue")
            break
    if args.ship and (args.work / "best").exists():
        shutil.rmtree(SHIP_DIR, ignore_errors=True)
        shutil.copytree(args.work / "best", SHIP_DIR)
        log(f"shipped step {best['step']} to {SHIP_DIR}")
    return {"best": best, "history": history, "step": step}


if __name__ == "__main__":
    main()
