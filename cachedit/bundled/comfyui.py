"""The bundled digits model inside real ComfyUI (import only where ComfyUI is importable).

`load_patcher()` converts the diffusers weights with ComfyUI's own converter
(`comfy.model_detection.convert_diffusers_mmdit`) into ComfyUI's Flux class and wraps it in a
ModelPatcher; `generate()` samples it like a KSampler with the bundled sigma schedule.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import digits as D


def load_patcher():
    """(ModelPatcher of ComfyUI's Flux holding the bundled weights, the diffusers DigitsModel for conditioning)."""
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models
    from safetensors.torch import load_file

    cfg = D.load_config()["transformer"]
    state = load_file(D.WEIGHTS_PATH)
    transformer_sd = {k[len("transformer."):]: v.float() for k, v in state.items() if k.startswith("transformer.")}
    comfy_sd = comfy.model_detection.convert_diffusers_mmdit(transformer_sd, "")
    # diffusers packs 2x2 patches of a 1-channel image into 4 channels; ComfyUI's Flux patchifies itself
    unet_config = dict(image_model="flux", in_channels=cfg["in_channels"] // 4, out_channels=cfg["out_channels"] // 4,
                       patch_size=2, vec_in_dim=cfg["pooled_projection_dim"], context_in_dim=cfg["joint_attention_dim"],
                       hidden_size=cfg["num_attention_heads"] * cfg["attention_head_dim"], mlp_ratio=4.0,
                       num_heads=cfg["num_attention_heads"], depth=cfg["num_layers"],
                       depth_single_blocks=cfg["num_single_layers"], axes_dim=list(cfg["axes_dims_rope"]), theta=10000,
                       qkv_bias=True, guidance_embed=bool(cfg.get("guidance_embeds", False)))
    config = comfy.supported_models.Flux(unet_config)
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = config.get_model({}, "", device=cpu)
    missing, unexpected = model.diffusion_model.load_state_dict(comfy_sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"bundled weights do not fit ComfyUI's Flux: missing={missing} unexpected={unexpected}")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    return patcher, D.load_model()


def generate(patcher, bundled, labels: torch.Tensor, *, steps: int = 28, cfg: float = 3.0, seed: int = 0,
             sampler: str = "euler", size: int = 16, sigmas: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample like SamplerCustom (ComfyUI's sampler, the bundled schedule); images [B, 1, size, size] in [0, 1]."""
    import comfy.sample
    import comfy.samplers

    with torch.no_grad():
        cond = bundled.condition(labels)
        uncond = bundled.condition(torch.full_like(labels, D.NULL_LABEL))
    positive = [[cond[0], {"pooled_output": cond[1]}]]
    negative = [[uncond[0], {"pooled_output": uncond[1]}]]
    noise = torch.randn((labels.shape[0], 1, size, size), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        out = comfy.sample.sample_custom(patcher, noise, cfg, comfy.samplers.sampler_object(sampler),
                                         D.sigmas_schedule(steps) if sigmas is None else sigmas, positive, negative,
                                         torch.zeros_like(noise), disable_pbar=True, seed=seed)
    latent = patcher.model.latent_format.process_in(out)  # undo ComfyUI's latent scaling
    return ((latent + 1.0) * 0.5).clamp(0.0, 1.0)
