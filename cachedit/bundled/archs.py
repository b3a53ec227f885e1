"""How each bundled layout is called: latent layout, transformer kwargs, first block.

The bundled digits models share data, labels and sampler; what differs per diffusers layout is
only how a [B, 1, 16, 16] image tensor is laid out for the transformer and which keyword
arguments the transformer takes.  That knowledge lives here, once, and is used by
:func:`cachedit.bundled.digits.generate`, ``scripts/train_bundled.py`` and ``benchmarks/common.py``:

* ``flux``: diffusers ``FluxTransformer2DModel``; latents packed 2x2 like ``FluxPipeline``
  ([B, 64, 4]), ``img_ids``/``txt_ids``, ``pooled_projections``, timestep = sigma.
* ``wan``: diffusers ``WanTransformer3DModel``; latents [B, 1, 1, 16, 16] (one frame, like
  ``WanPipeline``), cross-attention to the label tokens, timestep = sigma * 1000 (the
  scheduler's timesteps, as ``WanPipeline`` passes them).
* ``qwen``: diffusers ``QwenImageTransformer2DModel``; latents packed 2x2 like
  ``QwenImagePipeline`` ([B, 64, 4]), ``img_shapes``, no text mask (the pipeline drops an
  all-ones mask), timestep = sigma (the pipeline passes ``timestep / 1000``).

* ``sd3``: diffusers ``SD3Transformer2DModel`` (MMDiT joint blocks, the last one context-pre-only,
  pooled text adaLN, SD3.5's RMS qk-norm); latents [B, 1, 16, 16] as ``StableDiffusion3Pipeline``
  passes them (the model patchifies), timestep = sigma * 1000. Held out: no default or setting was
  tuned on it (:data:`HELDOUT_ARCHS`); it is there to check that they hold on a model they never saw.
* ``zimage``: diffusers ``ZImageTransformer2DModel`` (Z-Image / Lumina2's single-stream DiT: a noise
  and a context refiner, then one stream of caption and image tokens); called as ``ZImagePipeline``
  calls it: a list of per-image latents [C, 1, H, W], timestep = 1 - sigma (rising), a list of
  caption features, and a list of outputs that are minus the velocity (the pipeline negates them:
  :attr:`Arch.velocity`). Held out like ``sd3``, trained after it.
* ``ltx``: diffusers ``LTXVideoTransformer3DModel`` (LTX-Video: one stream of video tokens with
  cross-attention to the text, adaLN-single); latents packed 2x2 to [B, 64, 4] (a one-frame 8x8
  latent of 4 channels, patch 1, as ``LTXPipeline`` packs [B, C, F, H, W]), an all-ones text mask,
  ``num_frames`` / ``height`` / ``width`` and the pipeline's RoPE interpolation scale, timestep =
  sigma * 1000. Held out, trained after ``zimage``.
* ``hunyuan``: diffusers ``HunyuanVideoTransformer3DModel`` (HunyuanVideo: a token refiner for the
  text, then double-stream and single-stream blocks); latents [B, 1, 1, 16, 16] (one frame, the
  model patchifies), an all-ones text mask, the pooled text projection, no embedded guidance (true
  CFG, as ``HunyuanVideoPipeline`` runs it with ``true_cfg_scale``), timestep = sigma * 1000. Held out,
  trained after ``ltx``.
* ``hidream``: diffusers ``HiDreamImageTransformer2DModel`` (HiDream-I1: double-stream then
  single-stream blocks with mixture-of-experts feed-forwards; the model appends a different Llama
  layer's text tokens to each block's input between blocks); latents [B, 1, 16, 16] (the model
  patchifies), the T5 tokens and one Llama feature per block, both cut from the label embedder's
  tokens (:data:`HIDREAM_T5_DIM`, :data:`HIDREAM_LLAMA_DIM`), the pooled embedding, timestep = sigma *
  1000, and the output negated as ``HiDreamImagePipeline`` does. Held out, trained after ``hunyuan``.

Conditioning is ``(encoder_hidden_states [B, T, D], pooled [B, P] or None)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["ARCHS", "HELDOUT_ARCHS", "Arch", "Conditioning", "get_arch", "initial_latents", "transformer_kwargs", "velocity"]

IMAGE_SIZE = 16  # pixels, 1 channel
Conditioning = Tuple[Tensor, Optional[Tensor]]


# --------------------------------------------------------------------------------------
# Latent layouts
# --------------------------------------------------------------------------------------
def pack_images(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, (H/2)*(W/2), C*4]  (``FluxPipeline._pack_latents``, ``QwenImagePipeline``'s too)."""
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


def _grid_side(tokens: int) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} image tokens are not a square grid")
    return side


def _timestep(sigma: Union[float, Tensor], batch: int, like: Tensor) -> Tensor:
    """A float sigma expanded to the call's batch (as pipelines do); a tensor is used as is."""
    if torch.is_tensor(sigma):
        return sigma
    return torch.tensor(sigma, device=like.device, dtype=like.dtype).expand(batch)


# --------------------------------------------------------------------------------------
# Per-layout transformer call
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _flux_ids(side: int, num_txt: int, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Made once per shape/device: no per-step allocation or host-to-device copy (the model only reads them)."""
    return prepare_img_ids(side, side, device=device, dtype=dtype), prepare_txt_ids(num_txt, device=device, dtype=dtype)


def _flux_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    ehs, pooled = cond
    img_ids, txt_ids = _flux_ids(_grid_side(latents.shape[1]), ehs.shape[1], latents.device, latents.dtype)
    return dict(hidden_states=latents, encoder_hidden_states=ehs, pooled_projections=pooled,
                timestep=_timestep(sigma, latents.shape[0], latents), img_ids=img_ids, txt_ids=txt_ids,
                return_dict=False)


def _wan_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    return dict(hidden_states=latents, timestep=_timestep(sigma, latents.shape[0], latents) * 1000.0,
                encoder_hidden_states=cond[0], return_dict=False)


def _qwen_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    side = _grid_side(latents.shape[1])
    return dict(hidden_states=latents, timestep=_timestep(sigma, latents.shape[0], latents),
                encoder_hidden_states=cond[0], encoder_hidden_states_mask=None,
                img_shapes=[[(1, side, side)]] * latents.shape[0], return_dict=False)


def _sd3_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    ehs, pooled = cond
    return dict(hidden_states=latents, encoder_hidden_states=ehs, pooled_projections=pooled,
                timestep=_timestep(sigma, latents.shape[0], latents) * 1000.0, return_dict=False)


def _zimage_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    # ZImagePipeline: timestep = (1000 - t) / 1000 = 1 - sigma; lists of per-image tensors
    t = 1.0 - _timestep(sigma, latents.shape[0], latents)
    return dict(x=list(latents.unsqueeze(2).unbind(0)), t=t, cap_feats=list(cond[0].unbind(0)), return_dict=False)


@functools.lru_cache(maxsize=16)
def _text_mask(batch: int, tokens: int, device: torch.device) -> Tensor:
    return torch.ones(batch, tokens, device=device)  # made once per shape/device, like _flux_ids


# LTXPipeline's rope_interpolation_scale: VAE compression 8 in time over 25 fps, 32 in space
_LTX_ROPE_SCALE = (8 / 25, 32.0, 32.0)


def _ltx_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    ehs = cond[0]
    side = _grid_side(latents.shape[1])
    return dict(hidden_states=latents, encoder_hidden_states=ehs,
                timestep=_timestep(sigma, latents.shape[0], latents) * 1000.0,
                encoder_attention_mask=_text_mask(ehs.shape[0], ehs.shape[1], ehs.device), num_frames=1, height=side,
                width=side, rope_interpolation_scale=_LTX_ROPE_SCALE, return_dict=False)


def _hunyuan_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    ehs, pooled = cond
    return dict(hidden_states=latents, timestep=_timestep(sigma, latents.shape[0], latents) * 1000.0,
                encoder_hidden_states=ehs, encoder_attention_mask=_text_mask(ehs.shape[0], ehs.shape[1], ehs.device),
                pooled_projections=pooled, guidance=None, return_dict=False)


# The bundled HiDream layout's text features: each label token carries the T5 feature, then one Llama
# feature per block (HiDreamImagePipeline passes them as [layers, B, T, D] beside [B, T, D_t5]).
HIDREAM_T5_DIM = 64
HIDREAM_LLAMA_DIM = 32


def hidream_text(ehs: Tensor) -> Tuple[Tensor, Tensor]:
    """The HiDream layout's label tokens [B, T, D] -> (T5 features [B, T, HIDREAM_T5_DIM], Llama features
    [layers, B, T, HIDREAM_LLAMA_DIM] as HiDreamImagePipeline passes them)."""
    b, t, _ = ehs.shape
    llama = ehs[..., HIDREAM_T5_DIM:].reshape(b, t, -1, HIDREAM_LLAMA_DIM).permute(2, 0, 1, 3)
    return ehs[..., :HIDREAM_T5_DIM], llama


def _hidream_kwargs(latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    ehs, pooled = cond
    t5, llama = hidream_text(ehs)
    return dict(hidden_states=latents, timesteps=_timestep(sigma, ehs.shape[0], latents) * 1000.0,
                encoder_hidden_states_t5=t5, encoder_hidden_states_llama3=llama, pooled_embeds=pooled,
                return_dict=False)


def _hidream_velocity(out: Tensor) -> Tensor:
    """Minus the output, as HiDreamImagePipeline takes it. In train mode diffusers returns the tokens'
    layout [B, C, tokens, p*p] instead of the image (the training script trains it there): put back."""
    if out.shape[-1] != out.shape[-2]:
        b, c, n, pp = out.shape
        p, side = math.isqrt(pp), math.isqrt(n)
        out = out.reshape(b, c, side, side, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, side * p, side * p)
    return -out


def _zimage_velocity(out: Any) -> Tensor:
    return -torch.stack(list(out), dim=0).squeeze(2)  # [B, C, 1, H, W] -> [B, C, H, W], negated as the pipeline does


def _identity(x: Any) -> Any:
    return x


def _frame(x: Tensor) -> Tensor:
    return x.unsqueeze(2)  # [B, C, H, W] -> [B, C, 1, H, W]


def _unframe(x: Tensor) -> Tensor:
    return x.squeeze(2)


@dataclass(frozen=True)
class Arch:
    """One diffusers layout of the bundled digits model."""

    name: str
    transformer_class: str  # attribute of ``diffusers``
    kwargs: Callable[[Tensor, Union[float, Tensor], Conditioning], Dict[str, Any]]
    to_latents: Callable[[Tensor], Tensor]  # [B, 1, 16, 16] -> the transformer's hidden_states layout
    to_images: Callable[[Tensor], Tensor]  # inverse of to_latents
    block_list: str  # attribute holding the first block list (probes hook element 0)
    pooled: bool  # whether the layout takes a pooled text embedding
    velocity: Callable[[Any], Tensor] = _identity  # the call's first output -> the flow velocity, as latents

    def build_transformer(self, config: Dict[str, Any]) -> nn.Module:
        """A randomly initialised transformer from the ``transformer`` section of a bundled config."""
        import diffusers

        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        return getattr(diffusers, self.transformer_class)(**cfg)

    def first_block(self, transformer: nn.Module) -> nn.Module:
        return getattr(transformer, self.block_list)[0]


ARCHS: Dict[str, Arch] = {
    "flux": Arch("flux", "FluxTransformer2DModel", _flux_kwargs, pack_images, unpack_latents, "transformer_blocks", True),
    "wan": Arch("wan", "WanTransformer3DModel", _wan_kwargs, _frame, _unframe, "blocks", False),
    "qwen": Arch("qwen", "QwenImageTransformer2DModel", _qwen_kwargs, pack_images, unpack_latents, "transformer_blocks",
                 False),
    "sd3": Arch("sd3", "SD3Transformer2DModel", _sd3_kwargs, _identity, _identity, "transformer_blocks", True),
    "zimage": Arch("zimage", "ZImageTransformer2DModel", _zimage_kwargs, _identity, _identity, "layers", False,
                   _zimage_velocity),
    "ltx": Arch("ltx", "LTXVideoTransformer3DModel", _ltx_kwargs, pack_images, unpack_latents, "transformer_blocks", False),
    "hunyuan": Arch("hunyuan", "HunyuanVideoTransformer3DModel", _hunyuan_kwargs, _frame, _unframe, "transformer_blocks",
                    True),
    "hidream": Arch("hidream", "HiDreamImageTransformer2DModel", _hidream_kwargs, _identity, _identity,
                    "double_stream_blocks", True, _hidream_velocity),
}
# Layouts trained after the defaults were settled and never used to tune them: benchmarks report them
# apart, as the check that the defaults hold on a model they have not seen.
HELDOUT_ARCHS: Tuple[str, ...] = ("sd3", "zimage", "ltx", "hunyuan", "hidream")


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown bundled arch {name!r}; available: {sorted(ARCHS)}") from None


def transformer_kwargs(arch: str, latents: Tensor, sigma: Union[float, Tensor], cond: Conditioning) -> Dict[str, Any]:
    """Keyword arguments of one transformer call, as the layout's diffusers pipeline passes them.

    ``latents`` in the layout of :func:`initial_latents` (the call's batch), ``sigma`` the
    flow-matching sigma in [0, 1] (a float is expanded to the batch, a [B] tensor is used as is),
    ``cond`` = ``(encoder_hidden_states, pooled or None)`` for the same batch.  Call it as
    ``velocity(arch, transformer(**transformer_kwargs(...))[0])`` (``return_dict=False`` is included).
    """
    return get_arch(arch).kwargs(latents, sigma, cond)


def velocity(arch: str, output: Any) -> Tensor:
    """The flow velocity (noise - x0, in the latents' layout) from a transformer call's first output:
    the output itself, except for layouts whose pipeline transforms it (Z-Image: a list, negated)."""
    return get_arch(arch).velocity(output)


def initial_latents(arch: str, batch: int, seed: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Starting noise in the layout's latent shape: ``randn([B, 1, 16, 16])`` from a CPU generator
    seeded with ``seed`` (the same numbers for every layout), laid out and moved to device/dtype."""
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((batch, 1, IMAGE_SIZE, IMAGE_SIZE), generator=gen, dtype=torch.float32)
    return get_arch(arch).to_latents(noise).to(device=device, dtype=dtype)
