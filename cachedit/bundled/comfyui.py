"""The bundled digits models inside real ComfyUI (import only where ComfyUI is importable).

`load_patcher(arch)` puts the trained diffusers weights into ComfyUI's own model class and wraps
it in a ModelPatcher; `generate()` samples it like SamplerCustom with the bundled sigma schedule.

* flux: ComfyUI's converter (`comfy.model_detection.convert_diffusers_mmdit`) -> `comfy.ldm.flux` Flux.
* qwen: ComfyUI's Qwen-Image uses the diffusers key names as they are (its checkpoints are in
  that format) -> `comfy.ldm.qwen_image` QwenImageTransformer2DModel, loaded strictly.
* wan: ComfyUI has no diffusers->Wan converter (it loads Wan's original checkpoints only), so
  the key map is diffusers' own original->diffusers converter
  (`convert_wan_transformer_to_diffusers`) applied to ComfyUI WanModel's key names, inverted.

Flux keeps ComfyUI's Flux latent format (undone after sampling, as before); Wan and Qwen-Image
get an identity one-channel 5D latent format instead of Wan 2.1's 16-channel VAE statistics.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from . import archs as A
from . import digits as D


def _flux_model(cfg: dict, sd: Dict[str, torch.Tensor]):
    import comfy.model_detection
    import comfy.supported_models

    comfy_sd = comfy.model_detection.convert_diffusers_mmdit(sd, "")
    # diffusers packs 2x2 patches of a 1-channel image into 4 channels; ComfyUI's Flux patchifies itself
    unet_config = dict(image_model="flux", in_channels=cfg["in_channels"] // 4, out_channels=cfg["out_channels"] // 4,
                       patch_size=2, vec_in_dim=cfg["pooled_projection_dim"], context_in_dim=cfg["joint_attention_dim"],
                       hidden_size=cfg["num_attention_heads"] * cfg["attention_head_dim"], mlp_ratio=4.0,
                       num_heads=cfg["num_attention_heads"], depth=cfg["num_layers"],
                       depth_single_blocks=cfg["num_single_layers"], axes_dim=list(cfg["axes_dims_rope"]), theta=10000,
                       qkv_bias=True, guidance_embed=bool(cfg.get("guidance_embeds", False)))
    return comfy.supported_models.Flux(unet_config), comfy_sd


def _qwen_model(cfg: dict, sd: Dict[str, torch.Tensor]):
    import comfy.supported_models

    unet_config = dict(image_model="qwen_image", patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
                       out_channels=cfg["out_channels"], num_layers=cfg["num_layers"],
                       attention_head_dim=cfg["attention_head_dim"], num_attention_heads=cfg["num_attention_heads"],
                       joint_attention_dim=cfg["joint_attention_dim"], axes_dims_rope=tuple(cfg["axes_dims_rope"]))
    return comfy.supported_models.QwenImage(unet_config), sd


def _hidream_model(cfg: dict, sd: Dict[str, torch.Tensor]):
    """ComfyUI's HiDream port has diffusers' parameter names: the weights load as they are."""
    import comfy.supported_models

    unet_config = dict(image_model="hidream", **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    return comfy.supported_models.HiDream(unet_config), sd


def wan_key_map(comfy_keys) -> Dict[str, str]:
    """{diffusers key: ComfyUI WanModel key}, from diffusers' original->diffusers Wan converter."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers({k: k for k in comfy_keys})


def _wan_model(cfg: dict, sd: Dict[str, torch.Tensor]):
    import comfy.supported_models

    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    unet_config = dict(image_model="wan2.1", model_type="t2v", patch_size=tuple(cfg["patch_size"]), in_dim=cfg["in_channels"],
                       dim=dim, ffn_dim=cfg["ffn_dim"], freq_dim=cfg["freq_dim"], text_dim=cfg["text_dim"],
                       out_dim=cfg["out_channels"], num_heads=cfg["num_attention_heads"], num_layers=cfg["num_layers"],
                       window_size=(-1, -1), qk_norm=True, cross_attn_norm=cfg["cross_attn_norm"], eps=cfg["eps"])
    config = comfy.supported_models.WAN21_T2V(unet_config)
    return config, None  # the key map needs the built model's keys: see load_patcher


def _digits_latent_format(dimensions: int = 3):
    """One channel, no scaling: the bundled Wan / Qwen-Image (one frame) and HiDream (an image) models
    work on pixels."""
    import comfy.latent_formats

    class DigitsLatent(comfy.latent_formats.LatentFormat):
        latent_channels = 1
        latent_dimensions = dimensions

    return DigitsLatent()


def load_patcher(arch: str = "flux", weights: Optional[str] = None) -> Tuple[object, D.DigitsModel]:
    """(ModelPatcher of ComfyUI's own model holding the bundled ``arch`` weights, the diffusers
    DigitsModel of the same weights, used for the label conditioning). ``weights``: another
    safetensors file of the same layout (e.g. :data:`cachedit.bundled.kontext.WEIGHTS_PATH`)."""
    import comfy.model_patcher
    from safetensors.torch import load_file

    cfg = D.load_config(D.config_path(arch))["transformer"]
    state = load_file(weights or D.weights_path(arch))
    sd = {k[len("transformer."):]: v.float() for k, v in state.items() if k.startswith("transformer.")}
    builders = {"flux": _flux_model, "qwen": _qwen_model, "wan": _wan_model, "hidream": _hidream_model}
    config, comfy_sd = builders[arch](cfg, sd)
    if arch != "flux":
        config.latent_format = _digits_latent_format(2 if arch == "hidream" else 3)
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = config.get_model({}, "", device=cpu)
    if arch == "wan":
        key_map = wan_key_map(model.diffusion_model.state_dict().keys())
        comfy_sd = {key_map[k]: v for k, v in sd.items()}
    missing, unexpected = model.diffusion_model.load_state_dict(comfy_sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"bundled {arch} weights do not fit ComfyUI's model: missing={missing} unexpected={unexpected}")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    return patcher, D.load_model(arch, weights=weights)


def generate(patcher, bundled: D.DigitsModel, labels: torch.Tensor, *, steps: int = 28, cfg: float = 3.0, seed: int = 0,
             sampler: str = "euler", size: int = 16, sigmas: Optional[torch.Tensor] = None,
             cond_options: Optional[dict] = None, uncond_options: Optional[dict] = None) -> torch.Tensor:
    """Sample like SamplerCustom (ComfyUI's sampler, the bundled schedule); images [B, 1, size, size] in [0, 1].
    `cond_options` go into both conditionings' options (e.g. {"control": a ControlNet}, as
    ControlNetApplyAdvanced sets them), unless `uncond_options` is given for the negative (e.g. {}
    for a ReferenceLatent on the positive only).

    The noise is the same ``randn([B, 1, size, size])`` (seeded CPU generator) as
    :func:`cachedit.bundled.digits.generate` starts from (one frame added for Wan / Qwen-Image).
    """
    import comfy.sample
    import comfy.samplers

    with torch.no_grad():
        cond = bundled.condition(labels)
        uncond = bundled.condition(torch.full_like(labels, D.NULL_LABEL))

    def entry(c, extra):
        text, options = c[0], ({"pooled_output": c[1]} if c[1] is not None else {})
        if bundled.arch == "hidream":  # the T5 tokens as the text; the per-block Llama features as [B, layers, T, D]
            text, llama = A.hidream_text(text)
            options["conditioning_llama3"] = llama.movedim(0, 1)
        return [[text, {**options, **(extra or {})}]]

    noise = torch.randn((labels.shape[0], 1, size, size), generator=torch.Generator().manual_seed(seed))
    if bundled.arch not in ("flux", "hidream"):
        noise = noise.unsqueeze(2)  # [B, C, frames, H, W]
    if sigmas is None:
        sigmas = D.sigmas_schedule(steps, bundled.sigma_shift)
    with torch.inference_mode():
        negative = entry(uncond, cond_options if uncond_options is None else uncond_options)
        out = comfy.sample.sample_custom(patcher, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas,
                                         entry(cond, cond_options), negative, torch.zeros_like(noise),
                                         disable_pbar=True, seed=seed)
    latent = patcher.model.latent_format.process_in(out)  # undo ComfyUI's latent scaling
    if latent.ndim == 5:
        latent = latent.squeeze(2)
    return ((latent + 1.0) * 0.5).clamp(0.0, 1.0)
