"""Small trained models bundled with cachedit for demos, tests and benchmarks (no downloads).

``cachedit.bundled.digits``: tiny class-conditional DiTs trained with flow matching on sklearn's
digits, in three diffusers layouts (:data:`ARCHS`: ``"flux"`` (default), ``"wan"``, ``"qwen"``);
``load_model(arch)`` and ``generate(model, labels, ...)`` work the same for each.
``cachedit.bundled.archs``: how each layout is called (latent layout, transformer kwargs);
``cachedit.bundled.metrics``: digits classifier accuracy, PSNR, SSIM, image grids;
``cachedit.bundled.comfyui``: the same weights in ComfyUI's own model classes.
"""

from .archs import initial_latents, transformer_kwargs
from .digits import (
    ARCHS,
    CONFIG_PATH,
    IMAGE_SIZE,
    NULL_LABEL,
    NUM_CLASSES,
    WEIGHTS_PATH,
    DigitsModel,
    LabelEmbedder,
    build_model,
    config_path,
    digit_accuracy,
    digits_dataset,
    generate,
    latents_to_images,
    load_config,
    load_model,
    pack_images,
    prepare_img_ids,
    prepare_txt_ids,
    psnr,
    save_grid,
    sigmas_schedule,
    ssim,
    unpack_latents,
    weights_path,
)

__all__ = [
    "ARCHS",
    "CONFIG_PATH",
    "IMAGE_SIZE",
    "NULL_LABEL",
    "NUM_CLASSES",
    "WEIGHTS_PATH",
    "DigitsModel",
    "LabelEmbedder",
    "build_model",
    "config_path",
    "digit_accuracy",
    "digits_dataset",
    "generate",
    "initial_latents",
    "latents_to_images",
    "load_config",
    "load_model",
    "pack_images",
    "prepare_img_ids",
    "prepare_txt_ids",
    "psnr",
    "save_grid",
    "sigmas_schedule",
    "ssim",
    "transformer_kwargs",
    "unpack_latents",
    "weights_path",
]
