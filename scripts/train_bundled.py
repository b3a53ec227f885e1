"""Train the tiny class-conditional digit DiTs bundled in ``cachedit/bundled`` (sklearn digits).

One recipe, eight diffusers layouts (``--arch``; see ``cachedit/bundled/archs.py`` for how each
is called):

* ``flux``: ``FluxTransformer2DModel``, 2 double-stream + 10 single-stream blocks, inner dim 160;
* ``wan``: ``WanTransformer3DModel``, 8 blocks (self-attention, cross-attention to the label
  tokens, FFN 512), inner dim 128, the image as one frame;
* ``qwen``: ``QwenImageTransformer2DModel``, 6 joint-attention blocks, inner dim 128;
* ``sd3`` (held out, ``archs.HELDOUT_ARCHS``): ``SD3Transformer2DModel``, 6 joint blocks (SD3.5's RMS
  qk-norm, the last block context-pre-only), inner dim 128, trained after the defaults were settled.
* ``zimage`` (held out, trained after sd3): ``ZImageTransformer2DModel``, a noise and a context refiner
  then 6 single-stream layers over caption + image tokens, inner dim 128, called as ``ZImagePipeline``
  calls it (lists of tensors, timestep 1 - sigma, output minus the velocity).
* ``ltx`` (held out, trained after zimage): ``LTXVideoTransformer3DModel``, 6 blocks (self-attention,
  cross-attention to the label tokens, FFN 512, adaLN-single), inner dim 128, over the 2x2-packed image
  as a one-frame 8x8 latent, called as ``LTXPipeline`` calls it.
* ``hunyuan`` (held out, trained after ltx): ``HunyuanVideoTransformer3DModel``, a 1-layer token refiner,
  2 double-stream + 6 single-stream blocks, inner dim 128, the image as one frame, no embedded guidance.
* ``hidream`` (held out, trained after hunyuan): ``HiDreamImageTransformer2DModel``, 2 double-stream + 6
  single-stream blocks with mixture-of-experts feed-forwards (4 routed experts, 2 active, one shared),
  inner dim 96, a T5 feature and one Llama feature per block cut from the label tokens, output negated.

Usage (from the repository root; with no options but ``--arch`` the defaults reproduce the
committed weights, see ``DEFAULTS``)::

    python scripts/train_bundled.py --arch flux --device cuda   # how digits_flux.* were made (H200)
    python scripts/train_bundled.py --arch wan                  # digits_wan.*  (CPU, 1 thread)
    python scripts/train_bundled.py --arch qwen                 # digits_qwen.* (CPU, 1 thread)
    python scripts/train_bundled.py --arch sd3                  # digits_sd3.*  (CPU, 1 thread)
    python scripts/train_bundled.py --arch zimage               # digits_zimage.* (CPU, 1 thread)
    python scripts/train_bundled.py --arch ltx                  # digits_ltx.* (CPU, 1 thread)
    python scripts/train_bundled.py --arch hunyuan              # digits_hunyuan.* (CPU, 1 thread)
    python scripts/train_bundled.py --arch hidream              # digits_hidream.* (CPU, 1 thread)
    python scripts/train_bundled.py --arch wan --out-dir /tmp/digits --steps 300   # quick experiment elsewhere
    python scripts/train_bundled.py --arch qwen --eval-only --eval-images 80 --grid /tmp/qwen.png

The evaluation (``cachedit.bundled.evaluate``) prints the digit accuracy (28 steps, CFG 3) for
euler/heun and batched/separate CFG, the time of one 28-step batched-CFG generation of 8 images,
and the per-step relative L1 change of the first block's hidden-state residual (how "cacheable"
the model is).

Options: ``--arch``, ``--steps N`` (optimizer steps), ``--batch-size``, ``--lr``, ``--min-lr``,
``--warmup``, ``--ema-decay``, ``--cond-drop`` (label-dropout probability to the null label 10),
``--t-sampling {logit_normal,uniform}``, ``--seed``, ``--threads``, ``--device`` (default cpu),
``--out-dir`` (default ``cachedit/bundled``), ``--eval-images N`` (generated images for the
final accuracy report, 0 = skip), ``--grid PATH`` (also write a PNG grid of evaluation samples),
``--sigma-shift`` (sampling-schedule shift written into the config).

What it does: loads ``sklearn.datasets.load_digits`` (1797 8x8 images), upscales them
bilinearly to 16x16 in [-1, 1], lays them out as the arch's pipeline lays out latents (packed
2x2 into 64 tokens of 4 channels for Flux and Qwen-Image, [B, 1, 1, 16, 16] for Wan) and trains
the transformer plus a label embedder (4 "text" tokens, and a pooled vector for Flux) with flow
matching (rectified flow): ``x_s = (1 - s) x0 + s noise``, target ``v = noise - x0``, ``s``
logit-normal, 10% label dropout for classifier-free guidance, adaLN-Zero init, AdamW with
warmup + cosine decay, EMA weights.  The EMA weights are written in fp16 to
``digits_<arch>.safetensors`` (keys ``transformer.*`` and ``label_embedder.*``) with
``digits_<arch>_config.json``.  Seeded and deterministic on a given machine/thread count.

How the committed weights were made:

* flux: one H200 run (2500 steps, batch 128, 147 s of training, final EMA loss 0.112; accuracy
  1.000 on 200 images for euler and heun, batched and separate CFG, 0.985 without CFG).
* wan: ``--arch wan`` (1200 steps, batch 64, 1 thread) on a 2-core AMD EPYC shared with two other
  test jobs (load 4-9): 5856 s of training (98 min), final loss 0.131 (smoothed 0.135);
  2.31 M parameters, 4.6 MB; accuracy 1.000 on 80 images for euler/heun, batched/separate CFG,
  0.963 without CFG.
* qwen: ``--arch qwen`` (1200 steps, batch 64, 1 thread), at the same time on the same machine:
  4500 s of training (75 min), final loss 0.118 (smoothed 0.130); 3.67 M parameters, 7.4 MB;
  accuracy 1.000 on 80 images for euler/heun, batched/separate CFG, 0.963 without CFG.

* sd3: ``--arch sd3`` (1200 steps, batch 64, 1 thread) on the same 2-core machine, nearly idle (load ~1):
  1206 s of training (20 min), final loss 0.128 (smoothed 0.133); 3.49 M parameters, 7.1 MB;
  accuracy 1.000 on 80 images for euler/heun, batched/separate CFG, 0.975 without CFG.

* zimage: ``--arch zimage`` (1200 steps, batch 64, 1 thread) on the same 2-core machine, beside a few
  short test runs (load 1-2): 2296 s of training (38 min), final loss 0.127 (smoothed 0.132); 2.47 M
  parameters, 5.0 MB; accuracy 1.000 on 80 images for euler/heun, batched/separate CFG, 0.963 without CFG.

* ltx: ``--arch ltx`` (1200 steps, batch 64, 1 thread) on the same 2-core machine, beside short test runs
  (load 1-2): 810 s of training (14 min), final loss 0.122 (smoothed 0.134); 1.78 M parameters, 3.6 MB;
  accuracy 1.000 on 80 images for euler/heun, batched/separate CFG, 0.950 without CFG.

* hunyuan: ``--arch hunyuan`` (1200 steps, batch 64, 1 thread) on the same 2-core machine, beside a few
  short test runs (load 1-2): 1075 s of training (18 min), final loss 0.123 (smoothed 0.129); 3.12 M
  parameters, 6.3 MB; accuracy 1.000 on 80 images for euler/heun, batched/separate CFG, 0.975 without CFG.

* hidream: ``--arch hidream`` (1000 steps, batch 64, 2 threads) on the same 2-core machine with nothing
  else running (two threads were 1.8x faster per step than one there): 863 s of training (14 min), final
  loss 0.138 (smoothed 0.132); 4.14 M parameters (the experts: 5 feed-forwards per block), 8.3 MB;
  accuracy 1.000 on 80 images for euler/heun, batched/separate CFG, 0.975 without CFG.

The sharing set those times: at load ~2 a batch-64 step took 0.9 s (Wan) and 0.86 s (Qwen-Image)
with two threads, about 20 minutes per 1200-step run; at load 4-5 one thread ran 2.5x faster per
step than two (hence ``threads=1`` in ``DEFAULTS``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from cachedit.bundled import archs as A  # noqa: E402
from cachedit.bundled import digits as D  # noqa: E402
from cachedit.bundled import evaluate as E  # noqa: E402

# Architectures: the ``transformer`` section is the diffusers class's config, ``label_embedder``
# the LabelEmbedder's.  Written verbatim into digits_<arch>_config.json.
CONFIGS = {
    # 2 double-stream + 10 single-stream blocks (12 in all, so cache-dit's F8B0 has a middle to reuse),
    # inner dim 160 = 4 heads x 40 (RoPE axes 8+16+16).
    "flux": {
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
        "label_embedder": {"num_embeddings": D.NUM_CLASSES + 1, "num_tokens": 4, "joint_attention_dim": 160,
                           "pooled_projection_dim": 160},
    },
    # 8 blocks (self-attention, cross-attention to the 4 label tokens, FFN), inner dim 128 = 4 heads x 32,
    # 3D patch (1, 2, 2) over a one-frame video [B, 1, 1, 16, 16].
    "wan": {
        "arch": "wan",
        "transformer": {
            "patch_size": [1, 2, 2],
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "in_channels": 1,
            "out_channels": 1,
            "text_dim": 128,
            "freq_dim": 256,
            "ffn_dim": 512,
            "num_layers": 8,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "eps": 1e-06,
            "rope_max_seq_len": 1024,
        },
        "label_embedder": {"num_embeddings": D.NUM_CLASSES + 1, "num_tokens": 4, "joint_attention_dim": 128,
                           "pooled_projection_dim": 0},
    },
    # 6 joint-attention (dual-stream, MMDiT) blocks, inner dim 128 = 4 heads x 32 (RoPE axes 8+12+12),
    # 2x2-packed latents [B, 64, 4] like QwenImagePipeline; proj_out emits patch 2x2 x 1 channel.
    "qwen": {
        "arch": "qwen",
        "transformer": {
            "patch_size": 2,
            "in_channels": 4,
            "out_channels": 1,
            "num_layers": 6,
            "attention_head_dim": 32,
            "num_attention_heads": 4,
            "joint_attention_dim": 128,
            "guidance_embeds": False,
            "axes_dims_rope": [8, 12, 12],
        },
        "label_embedder": {"num_embeddings": D.NUM_CLASSES + 1, "num_tokens": 4, "joint_attention_dim": 128,
                           "pooled_projection_dim": 0},
    },
    # Held out (archs.HELDOUT_ARCHS): 6 MMDiT joint blocks like SD3.5 (RMS qk-norm, pooled text adaLN, the
    # last block context-pre-only), inner dim 128 = 4 heads x 32, patch 2 over the [B, 1, 16, 16] image.
    "sd3": {
        "arch": "sd3",
        "transformer": {
            "sample_size": 16,
            "patch_size": 2,
            "in_channels": 1,
            "out_channels": 1,
            "num_layers": 6,
            "attention_head_dim": 32,
            "num_attention_heads": 4,
            "joint_attention_dim": 128,
            "caption_projection_dim": 128,
            "pooled_projection_dim": 128,
            "pos_embed_max_size": 16,
            "qk_norm": "rms_norm",
        },
        "label_embedder": {"num_embeddings": D.NUM_CLASSES + 1, "num_tokens": 4, "joint_attention_dim": 128,
                           "pooled_projection_dim": 128},
    },
    # Held out, trained after sd3: Z-Image's single-stream DiT (a noise refiner and a context refiner,
    # then 6 layers over one stream of caption + image tokens), inner dim 128 = 4 heads x 32 (RoPE axes
    # 8+12+12), patch 2 over the [B, 1, 16, 16] image, called as ZImagePipeline calls it (archs.py).
    "zimage": {
        "arch": "zimage",
        "transformer": {
            "all_patch_size": [2],
            "all_f_patch_size": [1],
            "in_channels": 1,
            "dim": 128,
            "n_layers": 6,
            "n_refiner_layers": 1,
            "n_heads": 4,
            "n_kv_heads": 4,
            "cap_feat_dim": 128,
            "rope_theta": 256.0,
            "axes_dims": [8, 12, 12],
            "axes_lens": [64, 16, 16],
        },
        "label_embedder": {"num_embeddings": D.NUM_CLASSES + 1, "num_tokens": 4, "joint_attention_dim": 128,
                           "pooled_projection_dim": 0},
    },
    # Held out, trained after zimage: LTX-Video's DiT (6 blocks of self-attention, cross-attention to the
    # text and a feed-forward, adaLN-single modulation, RMS qk-norm across heads), inner dim 128 = 4 heads
    # x 32, over the 2x2-packed image (a one-frame 8x8 latent of 4 channels, patch 1), as LTXPipeline calls it.
    "ltx": {
        "arch": "ltx",
        "transformer": {
            "in_channels": 4,
            "out_channels": 4,
            "patch_size": 1,
            "patch_size_t": 1,
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "cross_attention_dim": 128,
            "num_layers": 6,
            "qk_norm": "rms_norm_across_heads",
            "caption_channels": 128,
        },
        "label_embedder": {"num_embeddings": D.NUM_CLASSES + 1, "num_tokens": 4, "joint_attention_dim": 128,
                           "pooled_projection_dim": 0},
    },
    # Held out, trained after ltx: HunyuanVideo's DiT (a token refiner, then double-stream and single-stream
    # blocks like FLUX), inner dim 128 = 4 heads x 32 (RoPE axes 8+12+12), patch 2 over the image as one
    # frame; no embedded guidance (true CFG), pooled text projection from the label embedder.
    "hunyuan": {
        "arch": "hunyuan",
        "transformer": {
            "in_channels": 1,
            "out_channels": 1,
            "num_attention_heads": 4,
            "attention_head_dim": 32,
            "num_layers": 2,
            "num_single_layers": 6,
            "num_refiner_layers": 1,
            "mlp_ratio": 4.0,
            "patch_size": 2,
            "patch_size_t": 1,
            "qk_norm": "rms_norm",
            "guidance_embeds": False,
            "text_embed_dim": 128,
            "pooled_projection_dim": 128,
            "rope_theta": 256.0,
            "rope_axes_dim": [8, 12, 12],
        },
        "label_embedder": {"num_embeddings": D.NUM_CLASSES + 1, "num_tokens": 4, "joint_attention_dim": 128,
                           "pooled_projection_dim": 128},
    },
    # Held out, trained after hunyuan: HiDream-I1's DiT, inner dim 96 = 3 heads x 32 (RoPE axes 8+12+12),
    # patch 2, MoE feed-forwards as HiDream has them (4 routed, 2 active); each label token is the T5
    # feature (64) then one Llama feature (32) per block (archs.HIDREAM_*_DIM). Trained in diffusers'
    # training path (its inference MoE runs without gradients), output read back by archs.velocity.
    "hidream": {
        "arch": "hidream",
        "transformer": {
            "patch_size": 2,
            "in_channels": 1,
            "out_channels": 1,
            "num_layers": 2,
            "num_single_layers": 6,
            "attention_head_dim": 32,
            "num_attention_heads": 3,
            "caption_channels": [64, 32],
            "text_emb_dim": 128,
            "num_routed_experts": 4,
            "num_activated_experts": 2,
            "axes_dims_rope": [8, 12, 12],
            "max_resolution": [16, 16],
            "llama_layers": [0, 1, 2, 3, 4, 5, 6, 7],
        },
        "label_embedder": {"num_embeddings": D.NUM_CLASSES + 1, "num_tokens": 4, "joint_attention_dim": 64 + 8 * 32,
                           "pooled_projection_dim": 128},
    },
}
ARCH = CONFIGS["flux"]  # backwards-compatible name


@dataclass(frozen=True)
class RunDefaults:
    """Per-arch defaults of ``--steps`` / ``--batch-size`` / ``--lr`` / ``--threads``: what the committed weights used."""

    steps: int
    batch_size: int
    lr: float = 1e-3
    threads: int = 2


DEFAULTS = {
    "flux": RunDefaults(steps=2500, batch_size=128),  # made with --device cuda (H200)
    # CPU; one thread: on the shared 2-core machine two threads ran 2.5x slower per step than one
    "wan": RunDefaults(steps=1200, batch_size=64, threads=1),
    "qwen": RunDefaults(steps=1200, batch_size=64, threads=1),
    "sd3": RunDefaults(steps=1200, batch_size=64, threads=1),
    "zimage": RunDefaults(steps=1200, batch_size=64, threads=1),
    "ltx": RunDefaults(steps=1200, batch_size=64, threads=1),
    "hunyuan": RunDefaults(steps=1200, batch_size=64, threads=1),
    "hidream": RunDefaults(steps=1000, batch_size=64, threads=2),  # the machine otherwise idle: 2 threads 1.8x faster here
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=sorted(CONFIGS), default="flux")
    p.add_argument("--steps", type=int, default=None, help="default: the arch's RunDefaults")
    p.add_argument("--batch-size", type=int, default=None, help="default: the arch's RunDefaults")
    p.add_argument("--lr", type=float, default=None, help="default: the arch's RunDefaults")
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--t-sampling", choices=["logit_normal", "uniform"], default="logit_normal")
    p.add_argument("--zero-init", type=int, default=1, help="zero-init AdaLN modulation and output projection (adaLN-Zero)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads; default: the arch's RunDefaults")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "cachedit", "bundled"))
    p.add_argument("--sigma-shift", type=float, default=1.0)
    p.add_argument("--eval-images", type=int, default=80)
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--grid", default=None, help="optional PNG path for a grid of evaluation samples")
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)
    defaults = DEFAULTS[args.arch]
    args.steps = defaults.steps if args.steps is None else args.steps
    args.batch_size = defaults.batch_size if args.batch_size is None else args.batch_size
    args.lr = defaults.lr if args.lr is None else args.lr
    args.threads = defaults.threads if args.threads is None else args.threads
    return args


def _zero(*modules: torch.nn.Module) -> None:
    for m in modules:
        for p in m.parameters(recurse=False):
            torch.nn.init.zeros_(p)


def _zero_table_modulation(time_proj: torch.nn.Module, blocks: torch.nn.ModuleList, tr: torch.nn.Module) -> None:
    """Wan's modulation and LTX's adaLN-single: a shared time projection plus a learned per-block table;
    both zero -> gates 0."""
    _zero(time_proj, *blocks)  # recurse=False: only each block's scale_shift_table
    torch.nn.init.zeros_(tr.scale_shift_table)
    _zero(tr.proj_out)


def zero_init(model: D.DigitsModel) -> None:
    """adaLN-Zero (DiT): every residual branch starts as identity, the output starts at 0."""
    tr = model.transformer
    if model.arch in ("flux", "hunyuan"):  # double-stream blocks modulate both streams, single-stream blocks one
        for blk in tr.transformer_blocks:
            _zero(blk.norm1.linear, blk.norm1_context.linear)
        _zero(*(blk.norm.linear for blk in tr.single_transformer_blocks))
        _zero(tr.norm_out.linear, tr.proj_out)
    elif model.arch == "wan":
        _zero_table_modulation(tr.condition_embedder.time_proj, tr.blocks, tr)
    elif model.arch == "ltx":
        _zero_table_modulation(tr.time_embed.linear, tr.transformer_blocks, tr)
    elif model.arch == "qwen":
        for blk in tr.transformer_blocks:
            _zero(blk.img_mod[1], blk.txt_mod[1])
        _zero(tr.norm_out.linear, tr.proj_out)
    elif model.arch == "sd3":
        for blk in tr.transformer_blocks:
            _zero(blk.norm1.linear, blk.norm1_context.linear)  # the last block's context norm is continuous: still a linear
        _zero(tr.norm_out.linear, tr.proj_out)
    elif model.arch == "hidream":  # every block (inside its HiDreamBlock wrapper) gates its branches by its modulation
        _zero(*(blk.block.adaLN_modulation[1] for blk in (*tr.double_stream_blocks, *tr.single_stream_blocks)))
        _zero(tr.final_layer.adaLN_modulation[1], tr.final_layer.linear)
    elif model.arch == "zimage":
        # modulated blocks gate their branches with tanh(gate): a zero modulation makes them identities
        _zero(*(blk.adaLN_modulation[0] for blk in (*tr.layers, *tr.noise_refiner)))
        for final in tr.all_final_layer.values():
            _zero(final.adaLN_modulation[1], final.linear)
    else:
        raise ValueError(model.arch)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * frac))


def apply_update(opt: torch.optim.Optimizer, params: list, ema_params: list, loss: torch.Tensor, step: int,
                 ema_decay: float) -> None:
    """One optimizer step on `loss` (gradients clipped at norm 1), then the EMA weights follow
    (decay warmed up as (1 + step) / (10 + step), at most `ema_decay`)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    decay = min(ema_decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)


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
    print(f"{args.arch}: {n_params:,} parameters ({n_params * 2 / 1e6:.2f} MB in fp16)", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)

    images, labels = D.digits_dataset()
    x_all = A.get_arch(args.arch).to_latents(images * 2.0 - 1.0).to(device)  # in [-1, 1], the layout's shape
    y_all = labels.to(device)
    n = x_all.shape[0]
    gen = torch.Generator().manual_seed(args.seed + 1)  # data / noise / timestep stream (CPU)

    t0 = time.time()
    running = None
    loss_val = float("nan")
    for step in range(args.steps):
        bsz = args.batch_size
        idx = torch.randint(0, n, (bsz,), generator=gen)
        drop = torch.rand(bsz, generator=gen) < args.cond_drop
        noise = torch.randn((bsz, *x_all.shape[1:]), generator=gen)
        if args.t_sampling == "logit_normal":
            s = torch.sigmoid(torch.randn(bsz, generator=gen))
        else:
            s = torch.rand(bsz, generator=gen)
        idx, drop, noise, s = idx.to(device), drop.to(device), noise.to(device), s.to(device)
        x0 = x_all[idx]
        y = torch.where(drop, torch.full_like(y_all[idx], D.NULL_LABEL), y_all[idx])
        s_b = s.view(-1, *([1] * (x0.ndim - 1)))
        xt = (1.0 - s_b) * x0 + s_b * noise
        target = noise - x0

        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        pred = A.velocity(args.arch, model.transformer(**A.transformer_kwargs(args.arch, xt, s, model.label_embedder(y)))[0])
        loss = F.mse_loss(pred, target)
        apply_update(opt, params, ema_params, loss, step, args.ema_decay)

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
    info = {"final_loss": loss_val, "final_loss_smoothed": running, "steps": args.steps, "train_time_s": train_time}
    return ema, info, train_time


def build_fresh(args) -> D.DigitsModel:
    model = D.build_model(CONFIGS[args.arch])
    if args.zero_init:
        zero_init(model)
    return model


def save(model: D.DigitsModel, info: dict, args) -> tuple[str, str]:
    """Write the EMA weights (fp16) and the config JSON; returns their paths."""
    from safetensors.torch import save_file

    os.makedirs(args.out_dir, exist_ok=True)
    state = {}
    for prefix, mod in (("transformer.", model.transformer), ("label_embedder.", model.label_embedder)):
        for k, v in mod.state_dict().items():
            state[prefix + k] = v.detach().to("cpu", torch.float16).contiguous()
    weights = os.path.join(args.out_dir, os.path.basename(D.weights_path(args.arch)))
    save_file(state, weights, metadata={"format": "pt"})
    config = copy.deepcopy(CONFIGS[args.arch])
    config["image_size"] = D.IMAGE_SIZE
    config["null_label"] = D.NULL_LABEL
    config["sigma_shift"] = args.sigma_shift
    config["training"] = {
        "dataset": "sklearn.datasets.load_digits, bilinear 8x8->16x16, [-1,1]",
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
        "device": args.device,
        "threads": args.threads,
        "train_time_s": round(info["train_time_s"], 1),
        "final_loss": round(info["final_loss"], 5),
        "final_loss_smoothed": round(info["final_loss_smoothed"], 5),
        "weights_dtype": "float16",
    }
    config_file = os.path.join(args.out_dir, os.path.basename(D.config_path(args.arch)))
    with open(config_file, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"wrote {weights} ({os.path.getsize(weights) / 1e6:.2f} MB)", flush=True)
    return weights, config_file


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.eval_only:
        E.evaluate(D.load_model(args.arch), args.eval_images, None, args.grid)
        return
    t_start = time.time()
    ema, info, train_time = train(args)
    print(f"training time {train_time:.1f}s, final loss {info['final_loss']:.4f} (smoothed {info['final_loss_smoothed']:.4f})", flush=True)
    weights, config_file = save(ema, info, args)
    if args.eval_images > 0:
        # evaluate exactly what was written (fp16 weights, loaded back as float32)
        model = D.load_state(D.build_model(D.load_config(config_file)), weights)
        model.transformer.eval().requires_grad_(False)
        model.label_embedder.eval().requires_grad_(False)
        E.evaluate(model, args.eval_images, args.sigma_shift, args.grid)
    print(f"total time {time.time() - t_start:.1f}s", flush=True)


if __name__ == "__main__":
    main()
