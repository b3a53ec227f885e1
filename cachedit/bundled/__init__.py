"""Small trained models bundled with cachedit for demos, tests and benchmarks (no downloads).

``cachedit.bundled.digits``: a tiny class-conditional FLUX-architecture DiT
(diffusers ``FluxTransformer2DModel``) trained with flow matching on sklearn's digits.
"""

from .digits import (
    CONFIG_PATH,
    IMAGE_SIZE,
    NULL_LABEL,
    NUM_CLASSES,
    WEIGHTS_PATH,
    DigitsModel,
    LabelEmbedder,
    build_model,
    digit_accuracy,
    digits_dataset,
    generate,
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
)

__all__ = [
    "CONFIG_PATH",
    "IMAGE_SIZE",
    "NULL_LABEL",
    "NUM_CLASSES",
    "WEIGHTS_PATH",
    "DigitsModel",
    "LabelEmbedder",
    "build_model",
    "digit_accuracy",
    "digits_dataset",
    "generate",
    "load_config",
    "load_model",
    "pack_images",
    "prepare_img_ids",
    "prepare_txt_ids",
    "psnr",
    "save_grid",
    "sigmas_schedule",
    "ssim",
    "unpack_latents",
]
