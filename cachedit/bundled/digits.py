"""Tiny, *trained*, class-conditional DiTs bundled with cachedit: loading and sampling.

Three models of the same task in three diffusers layouts (see :mod:`cachedit.bundled.archs`),
each trained with flow matching (rectified flow) on scikit-learn's bundled digits
(``sklearn.datasets.load_digits``) by ``scripts/train_bundled.py``:

* ``flux`` (the default): ``FluxTransformer2DModel``, 2 double-stream + 10 single-stream
  blocks, inner dim 160 (``digits_flux.safetensors`` + ``digits_flux_config.json``);
* ``wan``: ``WanTransformer3DModel``, 8 self/cross-attention blocks, inner dim 128;
* ``qwen``: ``QwenImageTransformer2DModel``, 6 joint-attention (dual-stream) blocks, inner dim 128.

They exist so that demos, tests and benchmarks of the inference cache run against models whose
per-step residuals behave like those of a trained DiT (smooth across steps), without
downloading weights.  Weights are fp16 on disk (loaded as float32 by default).

Data: 16x16 images, 1 channel, pixel values in [-1, 1] for the model (the 8x8 digits upscaled
bilinearly); :func:`generate` returns them in [0, 1].  The class label (0..9, and 10 = the null
/ unconditional label used for classifier-free guidance) goes through :class:`LabelEmbedder`,
which produces ``encoder_hidden_states`` [B, 4, D] (four "text" tokens) and, for Flux,
``pooled_projections`` [B, P].

Flow matching convention: ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the model predicts
the velocity ``v = noise - x0``; sampling integrates ``dx/dsigma = v`` from sigma=1 to sigma=0.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import archs as A
from .archs import IMAGE_SIZE, pack_images, prepare_img_ids, prepare_txt_ids, unpack_latents
from .metrics import digit_accuracy, digits_dataset, psnr, save_grid, ssim

__all__ = [
    "ARCHS",
    "HELDOUT_ARCHS",
    "CONFIG_PATH",
    "WEIGHTS_PATH",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "NULL_LABEL",
    "DigitsModel",
    "LabelEmbedder",
    "build_model",
    "config_path",
    "weights_path",
    "load_config",
    "load_model",
    "sigmas_schedule",
    "generate",
    "latents_to_images",
    "load_state",
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
# ("flux", "wan", "qwen"): the layouts the defaults were measured on (demo, tests, benchmarks)
ARCHS = tuple(a for a in A.ARCHS if a not in A.HELDOUT_ARCHS)
HELDOUT_ARCHS = A.HELDOUT_ARCHS  # ("sd3", "zimage", "ltx", "hunyuan", "hidream"): committed weights too, never used to tune anything (benchmarks only)


def config_path(arch: str = "flux") -> str:
    A.get_arch(arch)
    return os.path.join(_HERE, f"digits_{arch}_config.json")


def weights_path(arch: str = "flux") -> str:
    A.get_arch(arch)
    return os.path.join(_HERE, f"digits_{arch}.safetensors")


CONFIG_PATH = config_path("flux")
WEIGHTS_PATH = weights_path("flux")

NUM_CLASSES = 10  # digits 0..9
NULL_LABEL = 10  # the "empty prompt" label used for classifier-free guidance
DEFAULT_SIGMA_SHIFT = 1.0  # used when the config file carries no "sigma_shift"


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------
class LabelEmbedder(nn.Module):
    """Maps a class label (0..9, 10 = null) to the transformer's text conditioning.

    ``forward(labels)`` returns ``(encoder_hidden_states [B, num_tokens, joint_attention_dim],
    pooled [B, pooled_projection_dim])``; ``pooled`` is ``None`` when ``pooled_projection_dim``
    is 0 (layouts without a pooled text input: Wan, Qwen-Image).
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
        self.pooled = nn.Embedding(num_embeddings, pooled_projection_dim) if pooled_projection_dim else None

    def forward(self, labels: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        labels = labels.long()
        ehs = self.tokens(labels).view(labels.shape[0], self.num_tokens, self.joint_attention_dim)
        return ehs, (self.pooled(labels) if self.pooled is not None else None)


@dataclass
class DigitsModel:
    """A bundled model: a diffusers transformer plus its label embedder."""

    transformer: nn.Module  # the thing users accelerate with enable_cache
    label_embedder: nn.Module
    arch: str = "flux"  # key of cachedit.bundled.archs.ARCHS
    sigma_shift: Optional[float] = None  # sampling-schedule shift from the config (None: Flux's)

    def condition(self, labels: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """``(encoder_hidden_states, pooled or None)`` for a LongTensor of labels [B]."""
        p = next(self.transformer.parameters())
        labels = torch.as_tensor(labels, dtype=torch.long, device=p.device).reshape(-1)
        ehs, pooled = self.label_embedder(labels)
        return ehs.to(p.dtype), (pooled.to(p.dtype) if pooled is not None else None)

    # Set by generate() for the run in progress, as a diffusers pipeline sets them in __call__
    # (guidance_scale, do_classifier_free_guidance, num_timesteps):
    # CacheDit reads them when enable_cache was given this model (cachedit/manager/guidance.py).
    @property
    def guidance_scale(self) -> Optional[float]:
        return getattr(self, "_guidance_scale", None)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return bool(getattr(self, "_do_cfg", False))

    @property
    def num_timesteps(self) -> Optional[int]:
        return getattr(self, "_num_timesteps", None)

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
    """Fresh (randomly initialised) model with the architecture described by ``config``
    (``config["arch"]``, default ``"flux"``)."""
    arch = config.get("arch", "flux")
    transformer = A.get_arch(arch).build_transformer(config["transformer"])
    embedder = LabelEmbedder(**config["label_embedder"])
    return DigitsModel(transformer=transformer, label_embedder=embedder, arch=arch,
                       sigma_shift=config.get("sigma_shift"))


def load_state(model: DigitsModel, path: str) -> DigitsModel:
    """Load a bundled ``.safetensors`` (keys ``transformer.*``, ``label_embedder.*``) as float32, strictly."""
    from safetensors.torch import load_file

    state = load_file(path)
    for prefix, module in (("transformer.", model.transformer), ("label_embedder.", model.label_embedder)):
        module.load_state_dict({k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)},
                               strict=True)
    return model


def load_model(arch: str = "flux", dtype: torch.dtype = torch.float32,
               device: Union[str, torch.device] = "cpu", weights: Optional[str] = None) -> DigitsModel:
    """Load the committed trained weights of ``arch`` (one of :data:`ARCHS` or :data:`HELDOUT_ARCHS`), or another
    file of that layout (``weights``: e.g. the Kontext-style model's); modules are in eval mode with
    ``requires_grad=False``."""
    if not isinstance(arch, str):
        raise TypeError(f"load_model(arch, dtype, device): arch must be one of {ARCHS + HELDOUT_ARCHS}, got {arch!r}")
    model = load_state(build_model(load_config(config_path(arch))), weights or weights_path(arch))
    for m in (model.transformer, model.label_embedder):
        m.to(device=device)
        if dtype != torch.float32:
            m.to(dtype=dtype)
        m.eval()
        m.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------
def sigmas_schedule(num_steps: int, shift: Optional[float] = None) -> Tensor:
    """``num_steps + 1`` sigmas from 1.0 down to 0.0 (float32).

    A linear grid ``s = linspace(1, 0, num_steps + 1)`` passed through the usual SD3/Flux
    time shift ``shift * s / (1 + (shift - 1) * s)``.  ``shift=None`` uses the value stored in
    the bundled Flux config (``sigma_shift``, chosen at training time by measured sample quality);
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

    * Initial noise: :func:`cachedit.bundled.archs.initial_latents` (``torch.randn([B, 1, 16, 16])``
      from a CPU generator seeded with ``seed``, in the model's latent layout, device and dtype).
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
      sigma the step started from, and the latents (the layout's shape) after the step.
    * ``sigma_shift``: schedule shift for :func:`sigmas_schedule` (``None`` = the model's
      configured shift).

    The transformer is called exactly like the layout's diffusers pipeline calls it, with the
    keyword arguments of :func:`cachedit.bundled.archs.transformer_kwargs` (``return_dict=False``)
    under ``torch.no_grad()``, the timestep being sigma expanded to the batch of that call.
    """
    if cfg_mode not in ("batched", "separate", "none"):
        raise ValueError(f"unknown cfg_mode {cfg_mode!r}")
    if sampler not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {sampler!r}")
    transformer = model.transformer
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    arch = A.get_arch(model.arch)

    model._guidance_scale, model._do_cfg = float(guidance_scale), cfg_mode != "none" and guidance_scale > 1
    model._num_timesteps = num_steps
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    b = labels.shape[0]
    latents = A.initial_latents(arch.name, b, seed, device=device, dtype=dtype)
    sigmas = sigmas_schedule(num_steps, model.sigma_shift if sigma_shift is None else sigma_shift)

    with torch.no_grad():
        cond = model.condition(labels.to(device))
        if cfg_mode != "none":
            uncond = model.condition(torch.full((b,), NULL_LABEL, dtype=torch.long, device=device))
        if cfg_mode == "batched":
            batch_cond = tuple(torch.cat([u, c], dim=0) if c is not None else None for u, c in zip(uncond, cond))

        def call(x: Tensor, c: A.Conditioning, sigma: float) -> Tensor:
            return arch.velocity(transformer(**arch.kwargs(x, sigma, c))[0])

        def velocity(x: Tensor, sigma: float) -> Tensor:
            if cfg_mode == "none":
                return call(x, cond, sigma)
            if cfg_mode == "batched":
                v_unc, v_cond = call(torch.cat([x, x], dim=0), batch_cond, sigma).chunk(2)
            else:
                v_cond = call(x, cond, sigma)
                v_unc = call(x, uncond, sigma)
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

    return latents_to_images(latents, model.arch)


def latents_to_images(latents: Tensor, arch: str = "flux") -> Tensor:
    """Final latents of ``arch``'s layout -> images [B, 1, 16, 16] in [0, 1] (CPU float32)."""
    images = A.get_arch(arch).to_images(latents.float().cpu())
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)
