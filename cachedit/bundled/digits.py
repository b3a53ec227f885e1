"""A tiny, *trained*, class-conditional FLUX-architecture DiT bundled with cachedit.

The model is a real :class:`diffusers.FluxTransformer2DModel` (double-stream blocks
followed by single-stream blocks, RoPE, AdaLN modulation) trained with flow matching
(rectified flow) on scikit-learn's bundled digits dataset (``sklearn.datasets.load_digits``).
It exists so that demos, tests and benchmarks of the inference cache run against a model
whose per-step residuals behave like those of a trained DiT (smooth across steps), without
downloading any weights.  The weights are committed next to this file
(``digits_flux.safetensors``, fp16 on disk, loaded as float32 by default) together with
``digits_flux_config.json``; ``scripts/train_bundled.py`` reproduces them.

Data / latent layout (identical to what diffusers' ``FluxPipeline`` does with VAE latents):

* images are 16x16, 1 channel, pixel values in [-1, 1] for the model (the 8x8 digits are
  upscaled bilinearly); :func:`generate` returns them in [0, 1];
* a [B, 1, 16, 16] image is packed 2x2 (``FluxPipeline._pack_latents``) into 64 tokens of
  4 channels: ``hidden_states`` is [B, 64, 4];
* ``img_ids`` are [64, 3] with (0, row, col) (``FluxPipeline._prepare_latent_image_ids``),
  ``txt_ids`` are zeros [4, 3];
* the class label (0..9, and 10 = the null / unconditional label used for classifier-free
  guidance) goes through :class:`LabelEmbedder`, which produces ``encoder_hidden_states``
  [B, 4, joint_attention_dim] (four "text" tokens) and ``pooled_projections``
  [B, pooled_projection_dim];
* the timestep passed to the transformer is the flow-matching sigma in [0, 1] (diffusers'
  Flux multiplies it by 1000 internally), expanded to the batch: shape [B].

Flow matching convention: ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the model predicts
the velocity ``v = noise - x0``; sampling integrates ``dx/dsigma = v`` from sigma=1 to sigma=0.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CONFIG_PATH",
    "WEIGHTS_PATH",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "NULL_LABEL",
    "DigitsModel",
    "LabelEmbedder",
    "build_model",
    "load_config",
    "load_model",
    "sigmas_schedule",
    "generate",
    "digit_accuracy",
    "digits_dataset",
    "psnr",
    "ssim",
    "save_grid",
    "pack_images",
    "unpack_latents",
    "prepare_img_ids",
    "prepare_txt_ids",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_PATH = os.path.join(_HERE, "digits_flux_config.json")
WEIGHTS_PATH = os.path.join(_HERE, "digits_flux.safetensors")

IMAGE_SIZE = 16  # pixels (the 8x8 digits upscaled bilinearly)
NUM_CLASSES = 10  # digits 0..9
NULL_LABEL = 10  # the "empty prompt" label used for classifier-free guidance
DEFAULT_SIGMA_SHIFT = 1.0  # used when the config file carries no "sigma_shift"


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------
class LabelEmbedder(nn.Module):
    """Maps a class label (0..9, 10 = null) to Flux's two conditioning inputs.

    ``forward(labels)`` returns ``(encoder_hidden_states [B, num_tokens, joint_attention_dim],
    pooled_projections [B, pooled_projection_dim])``.
    """

    def __init__(
        self,
        num_embeddings: int = NUM_CLASSES + 1,
        num_tokens: int = 4,
        joint_attention_dim: int = 160,
        pooled_projection_dim: int = 160,
    ):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.num_tokens = num_tokens
        self.joint_attention_dim = joint_attention_dim
        self.pooled_projection_dim = pooled_projection_dim
        self.tokens = nn.Embedding(num_embeddings, num_tokens * joint_attention_dim)
        self.pooled = nn.Embedding(num_embeddings, pooled_projection_dim)

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        labels = labels.long()
        ehs = self.tokens(labels).view(labels.shape[0], self.num_tokens, self.joint_attention_dim)
        return ehs, self.pooled(labels)


@dataclass
class DigitsModel:
    """The bundled model: a diffusers ``FluxTransformer2DModel`` plus its label embedder."""

    transformer: "FluxTransformer2DModel"  # noqa: F821 - the thing users accelerate with enable_cache
    label_embedder: nn.Module

    def condition(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(encoder_hidden_states, pooled_projections)`` for a LongTensor of labels [B]."""
        p = next(self.transformer.parameters())
        labels = torch.as_tensor(labels, dtype=torch.long, device=p.device).reshape(-1)
        ehs, pooled = self.label_embedder(labels)
        return ehs.to(p.dtype), pooled.to(p.dtype)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype


def load_config(path: str = CONFIG_PATH) -> dict:
    with open(path) as f:
        return json.load(f)


def build_model(config: dict) -> DigitsModel:
    """Fresh (randomly initialised) model with the architecture described by ``config``."""
    from diffusers import FluxTransformer2DModel

    tcfg = dict(config["transformer"])
    tcfg["axes_dims_rope"] = tuple(tcfg["axes_dims_rope"])
    transformer = FluxTransformer2DModel(**tcfg)
    embedder = LabelEmbedder(**config["label_embedder"])
    return DigitsModel(transformer=transformer, label_embedder=embedder)


def load_model(dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu") -> DigitsModel:
    """Load the committed trained weights; modules are in eval mode with ``requires_grad=False``."""
    from safetensors.torch import load_file

    config = load_config()
    model = build_model(config)
    state = load_file(WEIGHTS_PATH)
    t_state = {k[len("transformer."):]: v.float() for k, v in state.items() if k.startswith("transformer.")}
    e_state = {k[len("label_embedder."):]: v.float() for k, v in state.items() if k.startswith("label_embedder.")}
    model.transformer.load_state_dict(t_state, strict=True)
    model.label_embedder.load_state_dict(e_state, strict=True)
    for m in (model.transformer, model.label_embedder):
        m.to(device=device)
        if dtype != torch.float32:
            m.to(dtype=dtype)
        m.eval()
        m.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------
# Latent packing (as in diffusers' FluxPipeline)
# --------------------------------------------------------------------------------------
def pack_images(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, (H/2)*(W/2), C*4]  (``FluxPipeline._pack_latents``)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: Tensor, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> Tensor:
    """Inverse of :func:`pack_images` (``FluxPipeline._unpack_latents`` without the VAE factor)."""
    b, n, c4 = x.shape
    x = x.view(b, height // 2, width // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, height, width)


def prepare_img_ids(height: int = IMAGE_SIZE // 2, width: int = IMAGE_SIZE // 2, device=None, dtype=torch.float32) -> Tensor:
    """[H*W, 3] ids (0, row, col) for the packed token grid (``_prepare_latent_image_ids``)."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


def prepare_txt_ids(num_tokens: int = 4, device=None, dtype=torch.float32) -> Tensor:
    return torch.zeros(num_tokens, 3, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------
def sigmas_schedule(num_steps: int, shift: Optional[float] = None) -> Tensor:
    """``num_steps + 1`` sigmas from 1.0 down to 0.0 (float32).

    A linear grid ``s = linspace(1, 0, num_steps + 1)`` passed through the usual SD3/Flux
    time shift ``shift * s / (1 + (shift - 1) * s)``.  ``shift=None`` uses the value stored in
    the bundled config (``sigma_shift``, chosen at training time by measured sample quality);
    ``shift=1.0`` is the plain linear schedule.  The endpoints are exactly 1.0 and 0.0.
    """
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    if shift is None:
        shift = _default_shift()
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    if shift != 1.0:
        s = shift * s / (1.0 + (shift - 1.0) * s)
    s = s.float()
    s[0], s[-1] = 1.0, 0.0
    return s


@functools.lru_cache(maxsize=None)
def _default_shift() -> float:
    try:
        return float(load_config().get("sigma_shift", DEFAULT_SIGMA_SHIFT))
    except FileNotFoundError:
        return DEFAULT_SIGMA_SHIFT


def generate(
    model: DigitsModel,
    labels: Union[Sequence[int], Tensor],
    num_steps: int = 28,
    guidance_scale: float = 3.0,
    seed: int = 0,
    cfg_mode: str = "batched",
    sampler: str = "euler",
    callback: Optional[Callable[[int, float, Tensor], None]] = None,
    sigma_shift: Optional[float] = None,
) -> Tensor:
    """Sample digits with the flow-matching ODE; returns images [B, 1, 16, 16] in [0, 1] (CPU float32).

    * Initial noise: ``torch.randn([B, 1, 16, 16], generator=torch.Generator().manual_seed(seed))``
      on the CPU, then packed to [B, 64, 4] and moved to the model's device / dtype.
    * ``cfg_mode``:
        - ``"batched"``: one transformer call per evaluation with the batch
          ``cat([uncond, cond])`` (unconditional half FIRST, like diffusers' SD pipelines);
        - ``"separate"``: two transformer calls per evaluation at the same timestep,
          conditional first, then unconditional (like diffusers' Flux pipeline with true CFG);
        - ``"none"``: a single conditional call, ``guidance_scale`` ignored.
      Guided velocity: ``v = v_uncond + guidance_scale * (v_cond - v_uncond)``.
    * ``sampler``: ``"euler"`` (one evaluation per step) or ``"heun"`` (Heun's 2nd-order
      method: two evaluations per step, except the final step to sigma=0 which is Euler,
      so ``2 * num_steps - 1`` evaluations).
    * ``callback(step, sigma, latents)`` is called after each step with the step index, the
      sigma the step started from, and the packed latents [B, 64, 4] after the step.
    * ``sigma_shift``: schedule shift for :func:`sigmas_schedule` (``None`` = bundled default).

    The transformer is called exactly like a diffusers pipeline calls it:
    ``transformer(hidden_states=, encoder_hidden_states=, pooled_projections=, timestep=,
    img_ids=, txt_ids=, return_dict=False)[0]`` under ``torch.no_grad()``, with
    ``timestep`` = sigma expanded to the batch (shape [B] of that call).
    """
    if cfg_mode not in ("batched", "separate", "none"):
        raise ValueError(f"unknown cfg_mode {cfg_mode!r}")
    if sampler not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {sampler!r}")
    transformer = model.transformer
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype

    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    b = labels.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((b, 1, IMAGE_SIZE, IMAGE_SIZE), generator=gen, dtype=torch.float32)
    latents = pack_images(noise).to(device=device, dtype=dtype)

    num_txt = getattr(model.label_embedder, "num_tokens", 4)
    img_ids = prepare_img_ids(device=device, dtype=dtype)
    txt_ids = prepare_txt_ids(num_txt, device=device, dtype=dtype)
    sigmas = sigmas_schedule(num_steps, sigma_shift)

    with torch.no_grad():
        cond_ehs, cond_pooled = model.condition(labels.to(device))
        if cfg_mode != "none":
            unc_ehs, unc_pooled = model.condition(torch.full((b,), NULL_LABEL, dtype=torch.long, device=device))
        if cfg_mode == "batched":
            batch_ehs = torch.cat([unc_ehs, cond_ehs], dim=0)
            batch_pooled = torch.cat([unc_pooled, cond_pooled], dim=0)

        def call(x: Tensor, ehs: Tensor, pooled: Tensor, sigma: float) -> Tensor:
            timestep = torch.tensor(sigma, device=device, dtype=dtype).expand(x.shape[0])
            return transformer(
                hidden_states=x,
                encoder_hidden_states=ehs,
                pooled_projections=pooled,
                timestep=timestep,
                img_ids=img_ids,
                txt_ids=txt_ids,
                return_dict=False,
            )[0]

        def velocity(x: Tensor, sigma: float) -> Tensor:
            if cfg_mode == "none":
                return call(x, cond_ehs, cond_pooled, sigma)
            if cfg_mode == "batched":
                v_unc, v_cond = call(torch.cat([x, x], dim=0), batch_ehs, batch_pooled, sigma).chunk(2)
            else:
                v_cond = call(x, cond_ehs, cond_pooled, sigma)
                v_unc = call(x, unc_ehs, unc_pooled, sigma)
            return v_unc + guidance_scale * (v_cond - v_unc)

        for i in range(num_steps):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            dt = s_next - s
            v = velocity(latents, s)
            if sampler == "heun" and s_next > 0.0:
                x_pred = latents + dt * v
                v2 = velocity(x_pred, s_next)
                latents = latents + dt * 0.5 * (v + v2)
            else:
                latents = latents + dt * v
            if callback is not None:
                callback(i, s, latents)

    images = unpack_latents(latents.float().cpu())
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------
# Data and evaluation
# --------------------------------------------------------------------------------------
def digits_dataset() -> tuple[Tensor, Tensor]:
    """All 1797 sklearn digits as ``(images [N, 1, 16, 16] in [0, 1], labels [N])``.

    The 8x8 images (0..16) are scaled to [0, 1] and upscaled bilinearly
    (``align_corners=False``) to 16x16; this is exactly the training data (times 2, minus 1).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return x, torch.from_numpy(d.target.astype(np.int64))


def _to_features(images: Tensor) -> np.ndarray:
    """[B, 1, 16, 16] in [0, 1] -> [B, 64] on the sklearn scale (0..16) via 2x2 average pooling."""
    images = torch.as_tensor(images).detach().float().cpu()
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.shape[-1] != 8:
        images = F.adaptive_avg_pool2d(images, (8, 8))
    return (images.clamp(0.0, 1.0) * 16.0).reshape(images.shape[0], -1).numpy().astype(np.float64)


@functools.lru_cache(maxsize=1)
def _digit_classifier():
    """RBF-SVC (gamma=0.001, C=10) fitted on all sklearn digits after the same 8->16->8
    round trip that generated images go through; deterministic (no probability calibration)."""
    from sklearn.svm import SVC

    x, y = digits_dataset()
    clf = SVC(gamma=0.001, C=10.0)
    clf.fit(_to_features(x), y.numpy())
    return clf


def digit_accuracy(images: Tensor, labels: Union[Sequence[int], Tensor]) -> float:
    """Fraction of ``images`` ([B, 1, 16, 16] in [0, 1]) that a digits classifier reads as ``labels``.

    Images are average-pooled 2x2 to 8x8, scaled to 0..16 and classified by an RBF-SVC fitted on
    sklearn's digits (cached).  Held-out accuracy of this classifier on real digits is ~0.99.
    """
    labels = np.asarray(torch.as_tensor(labels).reshape(-1).cpu().numpy(), dtype=np.int64)
    pred = _digit_classifier().predict(_to_features(images))
    return float((pred == labels).mean())


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements (float64); ``inf`` when identical."""
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float(((a - b) ** 2).mean())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / mse)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, window_size: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004), computed in float64.

    Gaussian window of ``window_size`` x ``window_size`` (default 7, since the images are only
    16x16; use 11 for the classic setting) with ``sigma`` 1.5, "valid" convolution (no padding),
    K1=0.01, K2=0.03, computed per channel and averaged over all windows, channels and images.
    Inputs are [H, W], [C, H, W] or [B, C, H, W]; identical inputs give exactly 1.0.
    """
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    while a.ndim < 4:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    h, w = a.shape[-2:]
    a = a.reshape(-1, 1, h, w)
    b = b.reshape(-1, 1, h, w)
    win = min(window_size, h, w)
    kernel = _gaussian_window(win, sigma)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_a = F.conv2d(a, kernel)
    mu_b = F.conv2d(b, kernel)
    var_a = F.conv2d(a * a, kernel) - mu_a * mu_a
    var_b = F.conv2d(b * b, kernel) - mu_b * mu_b
    cov = F.conv2d(a * b, kernel) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


def save_grid(rows: Sequence[tuple[str, Tensor]], path: str, scale: int = 4, label_width: int = 120, pad: int = 2) -> None:
    """Write a PNG with one labelled row per ``(name, images)``; images [B, 1, H, W] in [0, 1].

    Pixels are upscaled ``scale`` times (nearest) so the 16x16 digits are visible; the name is
    drawn on the left with PIL's default font.
    """
    from PIL import Image, ImageDraw

    prepared = []
    for name, imgs in rows:
        imgs = torch.as_tensor(imgs).detach().float().cpu()
        if imgs.ndim == 3:
            imgs = imgs.unsqueeze(1)
        imgs = imgs.clamp(0.0, 1.0)
        prepared.append((str(name), (imgs[:, 0] * 255.0 + 0.5).to(torch.uint8).numpy()))
    if not prepared:
        raise ValueError("save_grid needs at least one row")
    cell_h = max(r.shape[1] for _, r in prepared) * scale
    cell_w = max(r.shape[2] for _, r in prepared) * scale
    ncols = max(r.shape[0] for _, r in prepared)
    width = label_width + ncols * (cell_w + pad) + pad
    height = len(prepared) * (cell_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (64, 64, 64))
    draw = ImageDraw.Draw(canvas)
    for r, (name, arr) in enumerate(prepared):
        y = pad + r * (cell_h + pad)
        draw.text((4, y + cell_h // 2 - 6), name, fill=(255, 255, 255))
        for c in range(arr.shape[0]):
            tile = Image.fromarray(arr[c], mode="L").resize(
                (arr.shape[2] * scale, arr.shape[1] * scale), Image.NEAREST
            )
            canvas.paste(tile.convert("RGB"), (label_width + pad + c * (cell_w + pad), y))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    canvas.save(path, format="PNG")
