"""Train the tiny class-conditional FLUX DiT bundled in ``cachedit/bundled`` (sklearn digits).

Usage (from the repository root; the defaults reproduce the committed weights)::

    python scripts/train_bundled.py --device cuda --steps 2500 --batch-size 128   # how the committed weights were made
    python scripts/train_bundled.py                      # the same on CPU (slow: about an hour on 2 cores)
    python scripts/train_bundled.py --out-dir /tmp/digits --steps 300   # quick experiment elsewhere
    python scripts/train_bundled.py --eval-only          # only evaluate the committed weights
    python scripts/train_bundled.py --eval-only --eval-images 80 --grid /tmp/digits.png

The evaluation prints the digit accuracy (28 steps, CFG 3) for euler/heun and batched/separate
CFG, the time of one 28-step batched-CFG generation of 8 images, and the per-step relative L1
change of the first double block's hidden-state residual (how "cacheable" the model is).

Options: ``--steps N`` (optimizer steps), ``--batch-size``, ``--lr``, ``--min-lr``,
``--warmup``, ``--ema-decay``, ``--cond-drop`` (label-dropout probability to the null label 10),
``--t-sampling {logit_normal,uniform}``, ``--seed``, ``--threads`` (default 2),
``--device`` (default cpu), ``--out-dir`` (default ``cachedit/bundled``),
``--eval-images N`` (generated images for the final accuracy report, 0 = skip),
``--grid PATH`` (also write a PNG grid of evaluation samples),
``--sigma-shift`` (sampling-schedule shift written into the config).

What it does: loads ``sklearn.datasets.load_digits`` (1797 8x8 images), upscales them
bilinearly to 16x16 in [-1, 1], packs them 2x2 into 64 tokens of 4 channels (as diffusers'
FluxPipeline packs latents) and trains a ``diffusers.FluxTransformer2DModel`` (2 double-stream
+ 10 single-stream blocks, inner dim 160) plus a label embedder with flow matching (rectified
flow): ``x_s = (1 - s) x0 + s noise``, target ``v = noise - x0``, ``s`` logit-normal, 10%
label dropout for classifier-free guidance, AdamW with warmup + cosine decay, EMA weights.
The EMA weights are written in fp16 to ``digits_flux.safetensors`` (keys ``transformer.*`` and
``label_embedder.*``) with ``digits_flux_config.json``.  Seeded and deterministic on a given
machine/thread count. The committed weights came from one H200 run (2500 steps, batch 128,
147 s of training, final EMA loss 0.112; accuracy 1.000 on 200 images for euler and heun,
batched and separate CFG, 0.985 without CFG).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from cachedit.bundled import digits as D  # noqa: E402

ARCH = {
    # 2 double-stream + 10 single-stream blocks (12 in all, so cache-dit's F8B0 has a middle to reuse),
    # inner dim 160 = 4 heads x 40 (RoPE axes 8+16+16).
    "transformer": {
        "patch_size": 1,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": 2,
        "num_single_layers": 10,
        "attention_head_dim": 40,
        "num_attention_heads": 4,
        "joint_attention_dim": 160,
        "pooled_projection_dim": 160,
        "guidance_embeds": False,
        "axes_dims_rope": [8, 16, 16],
    },
    "label_embedder": {
        "num_embeddings": D.NUM_CLASSES + 1,
        "num_tokens": 4,
        "joint_attention_dim": 160,
        "pooled_projection_dim": 160,
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--t-sampling", choices=["logit_normal", "uniform"], default="logit_normal")
    p.add_argument("--zero-init", type=int, default=1, help="zero-init AdaLN modulation and output projection (adaLN-Zero)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "cachedit", "bundled"))
    p.add_argument("--sigma-shift", type=float, default=1.0)
    p.add_argument("--eval-images", type=int, default=80)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--grid", default=None, help="optional PNG path for a grid of evaluation samples")
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args(argv)


def zero_init(model: D.DigitsModel) -> None:
    """adaLN-Zero (DiT): every residual branch starts as identity, the output starts at 0."""
    tr = model.transformer
    for blk in tr.transformer_blocks:
        for lin in (blk.norm1.linear, blk.norm1_context.linear):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
    for blk in tr.single_transformer_blocks:
        torch.nn.init.zeros_(blk.norm.linear.weight)
        torch.nn.init.zeros_(blk.norm.linear.bias)
    torch.nn.init.zeros_(tr.norm_out.linear.weight)
    torch.nn.init.zeros_(tr.norm_out.linear.bias)
    torch.nn.init.zeros_(tr.proj_out.weight)
    torch.nn.init.zeros_(tr.proj_out.bias)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * frac))


def train(args) -> tuple[D.DigitsModel, dict, float]:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_fresh(args)
    model.transformer.to(device).train()
    model.label_embedder.to(device).train()
    ema = copy.deepcopy(model)
    for m in (ema.transformer, ema.label_embedder):
        m.requires_grad_(False)
    params = list(model.transformer.parameters()) + list(model.label_embedder.parameters())
    ema_params = list(ema.transformer.parameters()) + list(ema.label_embedder.parameters())
    n_params = sum(p.numel() for p in params)
    print(f"parameters: {n_params:,} ({n_params * 2 / 1e6:.2f} MB in fp16)", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)

    images, labels = D.digits_dataset()
    x_all = D.pack_images(images * 2.0 - 1.0).to(device)  # [N, 64, 4] in [-1, 1]
    y_all = labels.to(device)
    n = x_all.shape[0]
    img_ids = D.prepare_img_ids(device=device)
    txt_ids = D.prepare_txt_ids(ARCH["label_embedder"]["num_tokens"], device=device)
    gen = torch.Generator().manual_seed(args.seed + 1)  # data / noise / timestep stream (CPU)

    t0 = time.time()
    running = None
    loss_val = float("nan")
    for step in range(args.steps):
        bsz = args.batch_size
        idx = torch.randint(0, n, (bsz,), generator=gen)
        drop = torch.rand(bsz, generator=gen) < args.cond_drop
        noise = torch.randn((bsz, x_all.shape[1], x_all.shape[2]), generator=gen)
        if args.t_sampling == "logit_normal":
            s = torch.sigmoid(torch.randn(bsz, generator=gen))
        else:
            s = torch.rand(bsz, generator=gen)
        idx, drop, noise, s = idx.to(device), drop.to(device), noise.to(device), s.to(device)
        x0 = x_all[idx]
        y = torch.where(drop, torch.full_like(y_all[idx], D.NULL_LABEL), y_all[idx])
        xt = (1.0 - s[:, None, None]) * x0 + s[:, None, None] * noise
        target = noise - x0

        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        ehs, pooled = model.label_embedder(y)
        pred = model.transformer(
            hidden_states=xt,
            encoder_hidden_states=ehs,
            pooled_projections=pooled,
            timestep=s,
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

        decay = min(args.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)

        loss_val = float(loss.detach())
        running = loss_val if running is None else 0.98 * running + 0.02 * loss_val
        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.time() - t0
            eta = el / (step + 1) * (args.steps - step - 1)
            print(
                f"step {step:5d}/{args.steps} loss {loss_val:.4f} (smoothed {running:.4f}) "
                f"lr {opt.param_groups[0]['lr']:.2e} elapsed {el:6.1f}s eta {eta:6.1f}s",
                flush=True,
            )
    train_time = time.time() - t0
    info = {"final_loss": loss_val, "final_loss_smoothed": running, "steps": args.steps}
    return ema, info, train_time


def build_fresh(args) -> D.DigitsModel:
    model = D.build_model(ARCH)
    if args.zero_init:
        zero_init(model)
    return model


def save(model: D.DigitsModel, info: dict, args) -> None:
    from safetensors.torch import save_file

    os.makedirs(args.out_dir, exist_ok=True)
    state = {}
    for prefix, mod in (("transformer.", model.transformer), ("label_embedder.", model.label_embedder)):
        for k, v in mod.state_dict().items():
            state[prefix + k] = v.detach().to("cpu", torch.float16).contiguous()
    weights = os.path.join(args.out_dir, os.path.basename(D.WEIGHTS_PATH))
    save_file(state, weights, metadata={"format": "pt"})
    config = copy.deepcopy(ARCH)
    config["image_size"] = D.IMAGE_SIZE
    config["null_label"] = D.NULL_LABEL
    config["sigma_shift"] = args.sigma_shift
    config["training"] = {
        "dataset": "sklearn.datasets.load_digits, bilinear 8x8->16x16, [-1,1], packed 2x2",
        "objective": "flow matching (rectified flow): x_s=(1-s)x0+s*noise, v=noise-x0",
        "t_sampling": args.t_sampling,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "min_lr": args.min_lr,
        "warmup": args.warmup,
        "ema_decay": args.ema_decay,
        "cond_drop": args.cond_drop,
        "zero_init": bool(args.zero_init),
        "seed": args.seed,
        "final_loss": round(info["final_loss"], 5),
        "final_loss_smoothed": round(info["final_loss_smoothed"], 5),
        "weights_dtype": "float16",
    }
    with open(os.path.join(args.out_dir, os.path.basename(D.CONFIG_PATH)), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"wrote {weights} ({os.path.getsize(weights) / 1e6:.2f} MB)", flush=True)


def residual_change_profile(model: D.DigitsModel, labels, num_steps: int = 28, shift=None) -> list:
    """Per-step relative L1 change of the first double block's hidden-state residual.

    R_t = block0 output hidden_states - block0 input hidden_states at step t (28-step Euler,
    batched CFG 3.0); returns [mean|R_t - R_{t-1}| / mean|R_{t-1}| for t = 1..num_steps-1].
    """
    residuals = []

    def hook(module, args, kwargs, output):
        residuals.append((output[1] - kwargs["hidden_states"]).detach().float().cpu())

    h = model.transformer.transformer_blocks[0].register_forward_hook(hook, with_kwargs=True)
    try:
        D.generate(model, labels, num_steps=num_steps, guidance_scale=3.0, seed=0, sigma_shift=shift)
    finally:
        h.remove()
    return [
        float((residuals[t] - residuals[t - 1]).abs().mean() / residuals[t - 1].abs().mean())
        for t in range(1, len(residuals))
    ]


def evaluate(model: D.DigitsModel, n_images: int, shift, grid_path=None) -> None:
    labels = torch.arange(n_images) % D.NUM_CLASSES
    rows = []
    for sampler, cfg_mode in (("euler", "batched"), ("euler", "separate"), ("heun", "batched"), ("euler", "none")):
        t0 = time.time()
        imgs = D.generate(
            model, labels, num_steps=28, guidance_scale=3.0, seed=0, cfg_mode=cfg_mode, sampler=sampler, sigma_shift=shift
        )
        acc = D.digit_accuracy(imgs, labels)
        rows.append((f"{sampler}/{cfg_mode}", imgs[:20]))
        print(f"eval {sampler}/{cfg_mode}: accuracy {acc:.3f} on {n_images} images ({time.time() - t0:.1f}s)", flush=True)
    x, y = D.digits_dataset()
    print(f"eval real digits: accuracy {D.digit_accuracy(x, y):.3f} (classifier fitted on them)", flush=True)
    times = []
    for _ in range(3):
        t0 = time.time()
        D.generate(model, list(range(8)), num_steps=28, guidance_scale=3.0, seed=0, sigma_shift=shift)
        times.append(time.time() - t0)
    print(f"time of one 28-step batched-CFG generation of 8 images: {min(times):.3f}s (best of 3)", flush=True)
    diffs = residual_change_profile(model, list(range(8)), shift=shift)
    print("block0 residual relative L1 change per step: " + ", ".join(f"{d:.3f}" for d in diffs), flush=True)
    if grid_path:
        D.save_grid(rows, grid_path)
        print(f"wrote {grid_path}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.eval_only:
        evaluate(D.load_model(), args.eval_images, None, args.grid)
        return
    t_start = time.time()
    ema, info, train_time = train(args)
    print(f"training time {train_time:.1f}s, final loss {info['final_loss']:.4f} (smoothed {info['final_loss_smoothed']:.4f})", flush=True)
    save(ema, info, args)
    if args.eval_images > 0:
        # evaluate exactly what was written (fp16 weights, loaded back as float32)
        from safetensors.torch import load_file

        model = D.build_model(ARCH)
        state = load_file(os.path.join(args.out_dir, os.path.basename(D.WEIGHTS_PATH)))
        model.transformer.load_state_dict({k[12:]: v.float() for k, v in state.items() if k.startswith("transformer.")})
        model.label_embedder.load_state_dict({k[15:]: v.float() for k, v in state.items() if k.startswith("label_embedder.")})
        model.transformer.eval().requires_grad_(False)
        model.label_embedder.eval().requires_grad_(False)
        evaluate(model, args.eval_images, args.sigma_shift, args.grid)
    print(f"total time {time.time() - t_start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
