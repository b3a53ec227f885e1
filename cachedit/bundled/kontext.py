"""The bundled FLUX.1 Kontext-style editing model: reference latents appended to the image tokens.

FLUX.1 Kontext (and ComfyUI's ``ReferenceLatent`` node on Flux models) edits an image by appending
its latent tokens after the noisy image tokens, with RoPE ids whose first axis is 1 (the image's is
0), and keeping only the image tokens of the output. A cache sees longer block inputs whose
reference part never gets noise. The digits FLUX-layout model was never trained that way, so its
behaviour with reference tokens says little about Kontext; this one is: the bundled FLUX weights
fine-tuned (``scripts/train_kontext.py``) on one edit, "mirror the reference digit left to right",
with the digit's label as the prompt (10% dropped, as for CFG).

* :func:`transformer_kwargs`: the call FluxKontextPipeline makes (image tokens, then reference
  tokens; ids ``(0, row, col)`` then ``(1, row, col)``); the caller keeps the first 64 output tokens.
* :func:`edit_target`: what the model learns to draw from a reference image.
* :func:`generate`: sample edits on the diffusers path (Euler, CFG batched, reference in both halves).
* :func:`load_model`: the committed weights (``digits_flux_kontext.safetensors``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import Tensor

from . import archs as A
from . import digits as D

__all__ = ["CONFIG_PATH", "WEIGHTS_PATH", "edit_target", "generate", "load_model", "transformer_kwargs"]

_HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_PATH = os.path.join(_HERE, "digits_flux_kontext_config.json")
WEIGHTS_PATH = os.path.join(_HERE, "digits_flux_kontext.safetensors")
IMAGE_TOKENS = (D.IMAGE_SIZE // 2) ** 2  # 64 packed 2x2 tokens of the 16x16 image


def edit_target(images: Tensor) -> Tensor:
    """The edit the model was trained on: the reference image mirrored left to right ([..., H, W])."""
    return torch.flip(images, dims=[-1])


@functools.lru_cache(maxsize=8)
def _ids(num_txt: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    side = D.IMAGE_SIZE // 2
    img_ids = A.prepare_img_ids(side, side, device=device, dtype=dtype)
    ref_ids = img_ids.clone()
    ref_ids[:, 0] = 1.0  # Kontext / ComfyUI's "offset" reference method: first RoPE axis 1
    return torch.cat([img_ids, ref_ids], dim=0), A.prepare_txt_ids(num_txt, device=device, dtype=dtype)


def transformer_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: A.Conditioning,
                       ref_latents: Tensor) -> Dict[str, Any]:
    """Keyword arguments of a FluxTransformer2DModel call with reference tokens ([B, 64, 4] packed each)."""
    ehs, pooled = cond
    refs = ref_latents.to(latents.dtype).expand(latents.shape[0], -1, -1)  # one reference for the batch, or one each
    ids, txt_ids = _ids(ehs.shape[1], latents.device, latents.dtype)
    return dict(hidden_states=torch.cat([latents, refs], dim=1), encoder_hidden_states=ehs, pooled_projections=pooled,
                timestep=A._timestep(sigma, latents.shape[0], latents), img_ids=ids, txt_ids=txt_ids, return_dict=False)


def load_model(dtype: torch.dtype = torch.float32, weights: str = WEIGHTS_PATH) -> D.DigitsModel:
    """The committed Kontext-style weights (or ``weights``) as a DigitsModel (eval mode, no grad)."""
    return D.load_model("flux", dtype, weights=weights)


def generate(model: D.DigitsModel, ref_images: Tensor, labels: Union[Sequence[int], Tensor], num_steps: int = 28,
             guidance_scale: float = 3.0, seed: int = 0, sigma_shift: Optional[float] = None) -> Tensor:
    """Edit ``ref_images`` [B, 1, 16, 16] in [0, 1]: Euler, CFG batched (uncond first), the reference in both
    halves (as a Kontext workflow whose negative keeps the reference); images [B, 1, 16, 16] in [0, 1]."""
    transformer = model.transformer
    param = next(transformer.parameters())
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    b = labels.shape[0]
    model._guidance_scale, model._do_cfg, model._num_timesteps = float(guidance_scale), guidance_scale > 1, num_steps
    latents = A.initial_latents("flux", b, seed, device=param.device, dtype=param.dtype)
    ref = A.pack_images(ref_images.to(param.device, param.dtype) * 2.0 - 1.0)
    sigmas = D.sigmas_schedule(num_steps, model.sigma_shift if sigma_shift is None else sigma_shift)
    with torch.no_grad():
        cond = model.condition(labels.to(param.device))
        uncond = model.condition(torch.full((b,), D.NULL_LABEL, dtype=torch.long, device=param.device))
        both = tuple(torch.cat([u, c], dim=0) if c is not None else None for u, c in zip(uncond, cond))
        refs = torch.cat([ref, ref], dim=0)
        for i in range(num_steps):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            out = transformer(**transformer_kwargs(torch.cat([latents, latents], dim=0), s, both, refs))[0]
            v_unc, v_cond = out[:, :IMAGE_TOKENS].chunk(2)
            latents = latents + (s_next - s) * (v_unc + guidance_scale * (v_cond - v_unc))
    return D.latents_to_images(latents, "flux")
