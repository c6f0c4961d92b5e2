"""Train the embedded model crossgate-shapes-32 (a miniature Stable Diffusion) and write its folder.

Stages: (1) the VAE on rendered scenes, (2) the UNet and CLIP text encoder jointly on the VAE's
posterior-mean latents (v-prediction, zero-terminal-SNR, extra high-noise timesteps, 10% empty
captions for CFG, EMA), with held-out evaluation every --eval-every steps; the best EMA checkpoint is
exported as a StableDiffusionPipeline folder. Seeded and resumable (--resume continues from
<work>/vae.pt and <work>/unet.pt).

    nice -n 10 python scripts/train_embedded.py --work runs/embedded --ship
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crossgate.embedded import MODEL_NAME
from crossgate.embedded.model import (
    assemble_pipeline,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
    write_tokenizer,
)
from crossgate.embedded.scenes import AXIS, held_out_compositions, training_compositions
from crossgate.embedded.training import (
    EMA,
    diffusion_loss,
    drop_captions,
    encode_means,
    make_data,
    tokenize,
    vae_loss,
)
from embedded_detect import evaluate

SHIP_DIR = Path(__file__).resolve().parents[1] / "src" / "crossgate" / "embedded" / MODEL_NAME
TINY = {
    "vae": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8},
    "text": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "projection_dim": 32,
    },
    "unet": {
        "block_out_channels": [32, 32],
        "attention_head_dim": [2, 2],
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
        "transformer_layers_per_block": [1, 1],
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/embedded"), help="checkpoints and logs")
    p.add_argument("--ship", action="store_true", help=f"copy the best export to {SHIP_DIR}")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is ~12x faster than 2 on an oversubscribed CPU",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=60000)
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=6000, help="UNet + text encoder steps to run")
    p.add_argument("--schedule-steps", type=int, default=14000, help="horizon of the cosine lr decay")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--high-fraction", type=float, default=0.3, help="extra share of t in [500, 1000)")
    p.add_argument("--axis", choices=["both", "x", "y"], default="both", help="x or y: one-axis diagnostic")
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--eval-seeds", type=int, default=1, help="selection seeds per held-out caption")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate only the first N held-out captions")
    p.add_argument("--eval-steps", type=int, default=25, help="sampling steps of the evaluation")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument(
        "--time-limit", type=float, default=0.0, help="minutes from start; checkpoint (and export) and stop"
    )
    p.add_argument("--tiny", action="store_true", help="tiny components (tests)")
    return p.parse_args(argv)


def compositions(axis: str, held: bool) -> list:
    comps = held_out_compositions() if held else training_compositions()
    return comps if axis == "both" else [c for c in comps if AXIS[c[2]] == axis]


def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train_vae(args, data, device, overrides) -> torch.nn.Module:
    path = args.work / "vae.pt"
    torch.manual_seed(args.seed)
    vae = build_vae(**overrides).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    if args.resume and path.exists():
        state = torch.load(path, map_location=device, weights_only=False)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        log(f"vae: resumed at step {step}")
    vae.train()

    def checkpoint() -> None:
        state = {"model": vae.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}
        save_atomic({**state, "torch_rng": torch.get_rng_state(), "step": step}, path)

    t0, c0 = time.time(), time.process_time()
    while step < args.vae_steps:
        if args.deadline and time.time() > args.deadline:
            checkpoint()
            log(f"vae: time limit reached at step {step}; rerun with --resume to continue")
            return None
        idx = torch.randint(0, len(data.images), (args.batch,), generator=gen)
        lr = args.vae_lr * 0.5 * (1 + math.cos(math.pi * step / args.vae_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = vae_loss(vae, data.images[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.ckpt_every == 0 or step == args.vae_steps:
            checkpoint()
        if step % 100 == 0:
            cpu = time.process_time() - c0
            log(
                f"vae step {step}/{args.vae_steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s, cpu {cpu:.0f}s)"
            )
    vae.eval()
    with torch.no_grad():
        x = data.images[:512].to(device)
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        mse = torch.mean(((rec - x) / 2) ** 2).item()
    log(f"vae: PSNR on 512 training images (posterior mean) {10 * math.log10(1 / mse):.1f} dB")
    return vae


def export(path: Path, vae, text_encoder, tokenizer, unet) -> None:
    """Write a StableDiffusionPipeline folder: UNet and VAE weights stored fp16 (loaded as fp32)."""
    import copy

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe = assemble_pipeline(
        copy.deepcopy(vae).cpu().half(),
        copy.deepcopy(text_encoder).cpu().float(),
        tokenizer,
        copy.deepcopy(unet).cpu().half(),
    )
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.deadline = time.time() + args.time_limit * 60 if args.time_limit > 0 else 0.0
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    log("command: python scripts/train_embedded.py " + " ".join(sys.argv[1:] if argv is None else argv))
    over = TINY if args.tiny else {"vae": {}, "text": {}, "unet": {}}

    train_comps = compositions(args.axis, held=False)
    held = compositions(args.axis, held=True)
    t0 = time.time()
    data = make_data(args.scenes, args.seed, train_comps)
    log(f"rendered {len(data.images)} scenes of {len(train_comps)} compositions in {time.time() - t0:.0f}s")

    vae = train_vae(args, data, device, over["vae"])
    if vae is None:
        return {"best": None, "history": [], "step": 0}
    latents = encode_means(vae, data.images.to(device)).float()
    scale = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scale)
    latents = (latents * scale).to(device)
    log(f"latents {tuple(latents.shape)}, scaling_factor {scale:.4f}")

    tokenizer = write_tokenizer(args.work / "tokenizer")
    ids = tokenize(tokenizer, data.captions).to(device)
    torch.manual_seed(args.seed + 2)
    text_encoder = build_text_encoder(tokenizer, **over["text"]).to(device)
    unet = build_unet(**over["unet"]).to(device)
    scheduler = build_scheduler()
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_unet, ema_text = EMA(unet, args.ema), EMA(text_encoder, args.ema)
    gen = torch.Generator().manual_seed(args.seed + 3)
    step, best, history = 0, None, []
    path = args.work / "unet.pt"
    if args.resume and path.exists():
        st = torch.load(path, map_location=device, weights_only=False)
        unet.load_state_dict(st["unet"])
        text_encoder.load_state_dict(st["text"])
        opt.load_state_dict(st["opt"])
        ema_unet.load_state_dict(st["ema_unet"])
        ema_text.load_state_dict(st["ema_text"])
        gen.set_state(st["gen"])
        step, best, history = st["step"], st["best"], st["history"]
        log(f"unet: resumed at step {step}")
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    log(f"unet {n_unet / 1e6:.2f}M params, text encoder {n_text / 1e6:.2f}M params")

    def checkpoint() -> None:
        save_atomic(
            {
                "unet": unet.state_dict(),
                "text": text_encoder.state_dict(),
                "opt": opt.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "gen": gen.get_state(),
                "step": step,
                "best": best,
                "history": history,
            },
            path,
        )

    def evaluate_and_export() -> None:
        nonlocal best
        pipe = assemble_pipeline(vae, ema_text.module, tokenizer, ema_unet.module)
        seeds = [10_000 + s for s in range(args.eval_seeds)]  # selection seeds, not the reporting seeds
        with torch.random.fork_rng(devices=[]):
            m = evaluate(pipe, held[: args.eval_limit or None], seeds, steps=args.eval_steps)
        score = 0.5 * m["object_acc"] + m["relation_acc"] - 0.5 * m["flipped_acc"]
        history.append({"step": step, "minutes": round((time.time() - t_start) / 60, 1), **m})
        log(f"eval step {step}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()))
        export(args.work / "last", vae, ema_text.module, tokenizer, ema_unet.module)
        if best is None or score > best["score"]:
            best = {"step": step, "score": score, **m}
            export(args.work / "best", vae, ema_text.module, tokenizer, ema_unet.module)
            log(f"new best at step {step} (score {score:.1f})")
        (args.work / "history.json").write_text(json.dumps({"best": best, "history": history}, indent=1))

    t_start, c_start = time.time(), time.process_time()
    unet.train()
    text_encoder.train()
    losses = []
    while step < args.steps:
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        cap = drop_captions(data.caption_index[idx], args.cfg_drop, gen)
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * (0.55 + 0.45 * math.cos(math.pi * min(step / args.schedule_steps, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = diffusion_loss(
            unet,
            text_encoder,
            scheduler,
            latents[idx.to(device)],
            ids[cap.to(device)],
            gen,
            args.high_fraction,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        step += 1
        losses.append(loss.item())
        if step % 100 == 0:
            el = time.time() - t_start
            cpu = time.process_time() - c_start
            log(
                f"step {step}/{args.steps} loss {sum(losses[-100:]) / 100:.4f} lr {lr:.2e} ({el:.0f}s, cpu {cpu:.0f}s)"
            )
        timed_out = bool(args.deadline) and time.time() > args.deadline
        if step % args.eval_every == 0 or step == args.steps or timed_out:
            evaluate_and_export()
        if step % args.ckpt_every == 0 or step == args.steps or timed_out:
            checkpoint()
        if timed_out:
            log(f"time limit reached at step {step}")
            break
    if args.ship and (args.work / "best").exists():
        shutil.rmtree(SHIP_DIR, ignore_errors=True)
        shutil.copytree(args.work / "best", SHIP_DIR)
        log(f"shipped step {best['step']} to {SHIP_DIR}")
    return {"best": best, "history": history, "step": step}


if __name__ == "__main__":
    main()
