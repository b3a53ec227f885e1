"""Tiny ComfyUI-native models + a KSampler-equivalent sampler, for cachedit's ComfyUI
integration tests.

Everything here needs ``COMFYUI_PATH`` (a ComfyUI checkout; ``make test`` unpacks the pinned one
and sets it) and a venv with ComfyUI's requirements; see README.md beside this file. Without a
real torchvision, ``ensure_comfy`` imports ComfyUI with the test-only stand-in in ``stubs/``.
Verified against ComfyUI commit a125cd84b054a57729b5eecab930ca9408719832 (2025-10-12, "Improve AMD performance"). Nothing
in this module imports torch or ComfyUI at import time.

API: ``build_model(arch, seed)`` -> ModelPatcher; ``make_conditioning(arch)`` -> (positive,
negative); ``empty_latent(arch)`` -> {"samples": zeros}; ``sample(model, steps=, cfg=,
sampler_name=, scheduler=, seed=, latent=, positive=, negative=, denoise=)`` -> latent tensor
(runs ``nodes.common_ksampler`` under torch.inference_mode(), exactly what the KSampler node
does); ``ARCHS[arch]`` -> ArchSpec (machine-readable form of the table below, checked by
test_harness.py::test_hook_points_match_table).

Archs: flux, chroma, wan21_t2v, wan21_i2v (concat-channel i2v, in_dim 36 + CLIP-vision
tokens), qwen_image, hunyuan_video, ltxv, sd3, lumina2, hidream, sdxl. (Z-Image does not
exist in this checkout: lumina2 is the NextDiT it would reuse.)

HOOK POINTS (read from this checkout's code and verified at run time by the tests)
===================================================================================

Where things live
-----------------
* ``model_patcher.model`` is the ``comfy.model_base.<X>`` (BaseModel) instance;
  ``model_patcher.model.diffusion_model`` is the comfy.ldm network (an nn.Module).
* Call chain per step: samplers.py:_calc_cond_batch -> BaseModel.apply_model (APPLY_MODEL
  wrappers) -> BaseModel._apply_model -> ``diffusion_model(xc, t, context=..., control=...,
  transformer_options=..., **extra_conds)`` -> [DIFFUSION_MODEL wrappers, if the model's
  forward runs them] -> ``_forward`` -> blocks.
* ``transformer_options`` at that call (samplers.py:_calc_cond_batch + CFGGuider.inner_sample):
    - ``sigmas``: the current sigma, shape [B_latent] (NOT repeated for cond/uncond; [1] here);
      equals ``sample_sigmas[step]``.
    - ``sample_sigmas``: the full schedule (steps+1 values, last 0), set in
      samplers.py:CFGGuider.inner_sample.
    - ``cond_or_uncond``: list, one entry per chunk of the batch, 0 = positive (cond),
      1 = negative (uncond); cfg>1 with both fitting in memory gives ``[1, 0]`` (uncond chunk
      first) and ONE diffusion_model call per step with batch 2*B.
    - ``uuids``: one uuid.UUID per chunk = per conditioning entry (uuid4 made by
      sampler_helpers.convert_cond for each sampling run; stable across that run's steps).
    - plus ``patches``, ``patches_replace``, ``wrappers``, ``callbacks`` from model_options.
* The ``timestep`` positional arg is ``model_sampling.timestep(sigma)`` repeated per chunk,
  shape [2*B]: == sigma for flux, chroma, qwen_image, lumina2, ltxv (LTXV multiplies by 1000
  inside); == 1000*sigma for wan, hunyuan_video, sd3, hidream; a 0..999 DDPM index for sdxl.
  Lumina2's _forward uses ``1 - t``.
* Register: ``m = patcher.clone(); m.set_model_patch_replace(fn, "dit", "double_block", i)``
  (model_patcher.py:set_model_options_patch_replace -> transformer_options
  ["patches_replace"]["dit"][("double_block", i)]); ``fn(args: dict, extra: dict) -> dict``
  with ``extra["original_block"](args) -> dict``. Wrappers:
  ``m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, key, w)`` with
  ``w(executor, *args, **kwargs)`` -> ``executor(*args, **kwargs)`` (``executor.class_obj`` is
  the diffusion_model). The positional layout of ``args`` is the model's forward signature, so
  ``transformer_options`` sits at a different index per model (column "TO@").

Per architecture (``dm`` = model_patcher.model.diffusion_model)
-----------------------------------------------------------------
DM-wrap = forward runs WrapperExecutor with WrappersMP.DIFFUSION_MODEL.
"mutates" = the block writes into its input tensors in place (clone before calling
original_block if you keep them).

flux   comfy/ldm/flux/model.py: Flux.forward (DM-wrap, TO@7; args x,timestep,context,y,
       guidance,ref_latents,control,transformer_options) -> _forward -> forward_orig.
       Blocks: dm.double_blocks (DoubleStreamBlock), dm.single_blocks (SingleStreamBlock).
       ("double_block", i): args {img, txt, vec, pe, attn_mask, transformer_options} ->
         returns {img, txt}; block(img=, txt=, vec=, pe=, attn_mask=, modulation_dims_img=,
         modulation_dims_txt=, transformer_options=) -> (img, txt); mutates txt.
       ("single_block", i): args {img, vec, pe, attn_mask, transformer_options} -> {img};
         img is cat(txt, img) over tokens (txt FIRST, len = context len); block(x, vec=, pe=,
         attn_mask=, modulation_dims=, transformer_options=) -> x; mutates img.
       vec [B, hidden]; pe [B,1,L_txt+L_img,head_dim/2,2,2]. Output of forward_orig is
       img[:, txt_len:] -> final_layer(img, vec).
chroma comfy/ldm/chroma/model.py: Chroma.forward (DM-wrap, TO@5; x,timestep,context,guidance,
       control,transformer_options) -> _forward -> forward_orig. Same block lists/keys as
       flux, but "vec" is the per-block modulation (double: ((img_mods), (txt_mods)) tuples of
       ChromaModulationOut; single: ChromaModulationOut) sliced from one
       distilled_guidance_layer output; blocks comfy/ldm/chroma/layers.py take
       (img, txt, pe, vec, attn_mask, transformer_options) / (x, pe, vec, attn_mask,
       transformer_options) - pe BEFORE vec, use kwargs. Mutates img AND txt (double), img
       (single) via addcmul_. Skips blocks listed in dm.skip_mmdit / dm.skip_dit.
wan    comfy/ldm/wan/model.py: WanModel.forward (DM-wrap, TO@5; x,timestep,context,clip_fea,
       time_dim_concat,transformer_options; control comes in kwargs) -> _forward -> forward_orig.
       Blocks: dm.blocks (WanAttentionBlock). Only ("double_block", i):
       args {img, txt, vec, pe, transformer_options} -> {img}; "txt" is the embedded context
       (i2v: 257 CLIP tokens prepended), "vec" = e0 [B, 1, 6, dim], pe [1, L, 1, hd/2, 2, 2];
       context_img_len is NOT in args (closure). block(x, e=, freqs=, context=,
       context_img_len=, transformer_options=) -> x; no in-place mutation.
       Head: dm.head(x, e) with e = time_embedding output (not e0). Subclasses VaceWanModel,
       CameraWanModel, HumoWanModel honour the same key; WanModel_S2V's patch args lack
       transformer_options.
qwen_image comfy/ldm/qwen_image/model.py: QwenImageTransformer2DModel.forward (DM-wrap, TO@6;
       x,timestep,context,attention_mask,guidance,ref_latents,transformer_options) -> _forward.
       Blocks: dm.transformer_blocks. Only ("double_block", i): args {img, txt, vec, pe,
       transformer_options} -> {img, txt}; block(hidden_states=, encoder_hidden_states=,
       encoder_hidden_states_mask=, temb=, image_rotary_emb=, transformer_options=) ->
       (encoder_hidden_states, hidden_states) i.e. (txt, img) ORDER; no mutation. Also
       patches["double_block"] run after each block. x is 5-D [B,C,1,H,W].
hunyuan_video comfy/ldm/hunyuan_video/model.py: HunyuanVideo.forward (DM-wrap, TO@11;
       x,timestep,context,y,txt_byt5,guidance,attention_mask,guiding_frame_index,ref_latent,
       disable_time_r,control,transformer_options) -> _forward -> forward_orig.
       Blocks: dm.double_blocks, dm.single_blocks (flux layers, flipped_img_txt=True).
       ("double_block", i): args {img, txt, vec, pe, attention_mask, modulation_dims_img,
         modulation_dims_txt, transformer_options} -> {img, txt}; mutates txt.
       ("single_block", i): args {img, vec, pe, attention_mask, modulation_dims,
         transformer_options} -> {img}; img is cat(img, txt) (img FIRST, unlike flux);
         mutates img. NB key is "attention_mask" (flux: "attn_mask").
ltxv   comfy/ldm/lightricks/model.py: LTXVModel.forward (DM-wrap, TO@5; x,timestep,context,
       attention_mask,frame_rate,transformer_options,keyframe_idxs; control in kwargs) ->
       _forward. Blocks: dm.transformer_blocks (BasicTransformerBlock). Only
       ("double_block", i): args {img, txt, attention_mask, vec, pe, transformer_options} ->
       {img}; block(x, context=, attention_mask=, timestep=, pe=, transformer_options=) -> x;
       MUTATES img (x += ...). vec = adaln timestep [B, 1|tokens, 6*dim]; pe = (cos, sin).
       attention_mask is a required positional of forward: the conditioning must carry one.
sd3    comfy/ldm/modules/diffusionmodules/mmdit.py: OpenAISignatureMMDITWrapper.forward ->
       MMDiT.forward -> forward_core_with_concat. NO DIFFUSION_MODEL wrapper (use APPLY_MODEL
       or a patches_replace). Blocks: dm.joint_blocks (JointBlock). Only ("double_block", i):
       args {img, txt, vec, transformer_options} -> {img, txt}; block(context, x, c=,
       use_checkpoint=, transformer_options=) -> (context, x) i.e. (txt, img) ORDER; the LAST
       block is pre_only and returns txt=None; no mutation. No pe (abs pos-embed added to x).
lumina2 comfy/ldm/lumina/model.py: NextDiT.forward(x, timesteps, context, num_tokens,
       attention_mask=None, **kwargs) (DM-wrap; transformer_options is in KWARGS, TO@kw) ->
       _forward. NO patches_replace. Blocks: dm.layers (main), dm.noise_refiner,
       dm.context_refiner (run inside patchify_and_embed); JointTransformerBlock
       .forward(x, x_mask, freqs_cis, adaln_input=None, transformer_options=) -> x.
       Sequence is [caption tokens, image tokens]; output is negated (``return -x``).
       num_tokens comes from the conditioning's attention_mask (required).
hidream comfy/ldm/hidream/model.py: HiDreamImageTransformer2DModel.forward (DM-wrap, TO@7;
       x,t,y,context,encoder_hidden_states_llama3,image_cond,control,transformer_options) ->
       _forward. NO patches_replace. Blocks: dm.double_stream_blocks,
       dm.single_stream_blocks (HiDreamImageBlock wrapping the real block in .block);
       forward(image_tokens, image_tokens_masks=None, text_tokens=None, adaln_input=None,
       rope=None, transformer_options=) -> (image_tokens, text_tokens) for double,
       image_tokens for single. Each block gets a DIFFERENT llama layer's text appended
       (cur_llama31_encoder_hidden_states), single blocks see cat(img, txt_init, llama_i) and
       keep only the first hidden_states_seq_len tokens. Output negated.
sdxl   comfy/ldm/modules/diffusionmodules/openaimodel.py: UNetModel.forward (DM-wrap, TO@5;
       x,timesteps,context,y,control,transformer_options) -> _forward. No "dit" replace.
       Blocks: dm.input_blocks (ModuleList of TimestepEmbedSequential), dm.middle_block
       (TimestepEmbedSequential), dm.output_blocks; each run as forward_timestep_embed(module,
       h, emb, context, transformer_options, output_shape, time_context=, num_video_frames=,
       image_only_indicator=) -> h; transformer_options["block"] = ("input", i) |
       ("middle", 0) | ("output", i). Patches: transformer_options["patches"]
       ["input_block_patch"] fn(h, to)->h, ["input_block_patch_after_skip"],
       ["output_block_patch"] fn(h, hsp, to)->(h, hsp), ["emb_patch"]; attention-level
       patches_replace["attn1"/"attn2"][(block_name, number[, transformer_index])]
       (comfy/ldm/modules/attention.py:BasicTransformerBlock.forward).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
from typing import Any, Callable

__all__ = [
    "ARCHS",
    "ArchSpec",
    "COMFYUI_COMMIT",
    "build_model",
    "child_env",
    "comfy_path",
    "comfy_unavailable_reason",
    "empty_latent",
    "ensure_comfy",
    "make_conditioning",
    "model_input_shape",
    "sample",
]

#: The ComfyUI commit this harness (and the hook table above) was written against.
COMFYUI_COMMIT = "a125cd84b054a57729b5eecab930ca9408719832"

_COMFY_READY = False
_STUB_USED = False

#: Test-only stand-ins (a minimal ``torchvision``, see stubs/README.md), used when nothing real is there.
STUBS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubs")


# --------------------------------------------------------------------------------------
# Importing ComfyUI
# --------------------------------------------------------------------------------------

def comfy_path() -> str | None:
    """The ComfyUI checkout named by the ``COMFYUI_PATH`` environment variable (or None)."""
    p = os.environ.get("COMFYUI_PATH", "").strip()
    return os.path.abspath(os.path.expanduser(p)) if p else None


def ensure_comfy() -> None:
    """Put ``$COMFYUI_PATH`` on ``sys.path`` and import ComfyUI in ``--cpu`` mode.

    ComfyUI only parses ``sys.argv`` when ``comfy.options.enable_args_parsing()`` was
    called (``main.py`` does, importing as a library does not), so ``comfy.cli_args.args``
    holds the defaults and we flip ``args.cpu`` *before* ``comfy.model_management`` is
    imported (it reads ``args.cpu`` at import time to set ``cpu_state = CPUState.CPU``).

    Raises ImportError / RuntimeError when ComfyUI can't be imported.
    """
    global _COMFY_READY, _STUB_USED
    if _COMFY_READY:
        return
    path = comfy_path()
    if path is None:
        raise RuntimeError("COMFYUI_PATH is not set")
    if not os.path.isfile(os.path.join(path, "comfy", "model_base.py")):
        raise RuntimeError(f"COMFYUI_PATH={path!r} is not a ComfyUI checkout (no comfy/model_base.py)")
    added = path not in sys.path
    if added:
        sys.path.insert(0, path)
    stub = _torchvision_stub_on()
    try:
        _import_comfy(path)
    except BaseException:
        if added and path in sys.path:
            sys.path.remove(path)
        raise
    finally:
        if stub:
            _torchvision_stub_off()
    _COMFY_READY = True
    _STUB_USED = stub


def child_env() -> dict:
    """Environment for a child Python that imports ComfyUI itself (``COMFYUI_PATH`` first on its
    ``sys.path``): this process's, less ``PYTHONPATH``, plus the torchvision stand-in's folder when
    ComfyUI needed it here (there it stays visible to every library: enough to import ComfyUI and
    load a node pack). Call after ``ensure_comfy``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if _STUB_USED:
        env["PYTHONPATH"] = STUBS_DIR
    return env


def _torchvision_stub_on() -> bool:
    """ComfyUI imports torchvision at start-up (Cosmos, Stable Cascade, ACE-Step code). PyPI's
    torchvision does not load beside the CPU torch of this project's venv, so when none is
    importable the stand-in in ``STUBS_DIR`` is appended to ``sys.path`` for ComfyUI's import
    (a real torchvision always wins). True when the stand-in was put there."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None or STUBS_DIR in sys.path:
        return False
    # transformers caches (lru_cache) its first answer to "is torchvision installed?", and ComfyUI
    # imports transformers: ask it now, while the answer is still the true one (no).
    try:
        from transformers.utils import import_utils as tf_import_utils
    except ImportError:
        tf_import_utils = None
    for probe in ("is_torchvision_available", "is_torchvision_v2_available"):
        if hasattr(tf_import_utils, probe):
            getattr(tf_import_utils, probe)()
    sys.path.append(STUBS_DIR)
    return True


def _torchvision_stub_off() -> None:
    """Hide the stand-in again once ComfyUI is imported. ComfyUI's modules keep the objects they
    bound (``from torchvision import transforms``), while libraries that probe for torchvision
    (``importlib.util.find_spec``: diffusers, transformers) still find none and don't take the
    stand-in for a real one (diffusers would import ``pil_to_tensor`` from it)."""
    if STUBS_DIR in sys.path:
        sys.path.remove(STUBS_DIR)
    for name, module in list(sys.modules.items()):
        if (name == "torchvision" or name.startswith("torchvision.")) and \
                (getattr(module, "__file__", None) or "").startswith(STUBS_DIR + os.sep):
            del sys.modules[name]


def _import_comfy(path: str) -> None:
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    if "comfy.model_management" in sys.modules:
        mm = sys.modules["comfy.model_management"]
        if mm.cpu_state != mm.CPUState.CPU:
            raise RuntimeError("comfy.model_management was imported before --cpu could be set")

    import comfy.model_management  # noqa: F401  (reads args.cpu)
    import comfy.model_base  # noqa: F401
    import comfy.model_patcher  # noqa: F401
    import comfy.patcher_extension  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.supported_models  # noqa: F401
    import comfy.utils

    # ComfyUI's top-level ``nodes`` module (nodes.common_ksampler). Import it now, with the
    # checkout first on sys.path, so that no other ``nodes`` package (e.g. a custom node pack
    # directory of the same name) can shadow it later. NB: importing it puts
    # ``<COMFYUI_PATH>/comfy`` at sys.path[0] (nodes.py does that), so afterwards plain
    # ``import utils`` / ``import ops`` / ``import hooks`` resolve to ComfyUI's comfy/*.py.
    sys.path.remove(path)
    sys.path.insert(0, path)
    import nodes

    nodes_file = os.path.realpath(getattr(nodes, "__file__", "") or "")
    if nodes_file != os.path.realpath(os.path.join(path, "nodes.py")):
        raise RuntimeError(f"`import nodes` gave {nodes_file!r}, not ComfyUI's nodes.py under {path!r}")

    # The models are tiny: intra-op threads only add OpenMP barrier cost, which explodes on a
    # busy 2-core box (measured: SDXL 3-step sample 9 s with 2 threads vs 0.1 s with 1).
    import torch

    torch.set_num_threads(int(os.environ.get("COMFY_HARNESS_THREADS", "1")))

    # No tqdm bars from nodes.common_ksampler (it uses `not comfy.utils.PROGRESS_BAR_ENABLED`).
    comfy.utils.PROGRESS_BAR_ENABLED = False


def comfy_unavailable_reason() -> str | None:
    """None when ComfyUI imports (in --cpu mode); otherwise a human readable reason."""
    path = comfy_path()
    if path is None:
        return (
            "COMFYUI_PATH is not set: ComfyUI integration tests need a ComfyUI checkout "
            "and a venv with its requirements (see tests/comfyui/README.md)"
        )
    try:
        ensure_comfy()
    except Exception as e:  # pragma: no cover - depends on the environment
        return f"ComfyUI at COMFYUI_PATH={path!r} could not be imported: {type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------------------
# Architecture specs
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ArchSpec:
    name: str
    #: attribute name of the class in ``comfy.supported_models``
    config_cls: str
    #: tiny unet_config passed to the config class (the model's constructor kwargs)
    unet_config: dict
    #: shape of the latent produced by ComfyUI's matching Empty*Latent* node (batch=1)
    latent_shape: tuple
    #: builds (positive, negative) in ComfyUI CONDITIONING format; see make_conditioning
    cond_fn: Callable[..., tuple]
    #: the ``comfy.model_base`` class ComfyUI instantiates for this config
    model_base_cls: str
    #: attribute names of the block lists on ``model.diffusion_model``
    block_lists: tuple
    #: whether ``patches_replace["dit"]`` block replacement is honoured
    dit_replace: bool
    #: the ``("double_block"|"single_block", i)`` kinds honoured (empty when dit_replace is False)
    replace_kinds: tuple
    #: does ``diffusion_model.forward`` run ``WrappersMP.DIFFUSION_MODEL`` wrappers?
    diffusion_model_wrapper: bool
    #: position of ``transformer_options`` in the *positional* args a DIFFUSION_MODEL wrapper
    #: receives (``wrapper(executor, *args, **kwargs)``); None = it is in ``kwargs``
    wrapper_to_index: int | None = None
    #: kind -> (keys of the args dict given to the replace patch, keys it must return)
    replace_io: dict = dataclasses.field(default_factory=dict)
    #: kind -> arg keys whose tensors the *original block mutates in place* (clone them
    #: before calling ``original_block`` if you need the input afterwards)
    inplace: dict = dataclasses.field(default_factory=dict)
    is_video: bool = False
    notes: str = ""


def _rand(gen, *shape, scale=1.0):
    import torch

    return torch.randn(*shape, generator=gen) * scale


def _gen(seed):
    import torch

    return torch.Generator().manual_seed(seed)


def _text_pair(seed, make_one):
    """positive/negative built from two differently seeded generators."""
    pos = make_one(_gen(seed))
    neg = make_one(_gen(seed + 1))
    return pos, neg


# Each cond builder returns ([[cond, extra]], [[cond, extra]]) exactly like CLIPTextEncode
# (``clip.encode_from_tokens_scheduled`` returns ``[[cond, {"pooled_output": pooled, ...}]]``,
# with pooled_output None for text encoders without one).

def _cond_flux(seed, batch=1, txt_len=8):
    def one(g):
        return [[_rand(g, batch, txt_len, 64), {"pooled_output": _rand(g, batch, 32)}]]
    return _text_pair(seed, one)


def _cond_chroma(seed, batch=1, txt_len=8):
    def one(g):
        # T5-only text encoder: pooled_output is None (model_base.Flux.encode_adm reads the key)
        return [[_rand(g, batch, txt_len, 64), {"pooled_output": None}]]
    return _text_pair(seed, one)


def _cond_t5_only(dim):
    def build(seed, batch=1, txt_len=8):
        def one(g):
            return [[_rand(g, batch, txt_len, dim), {"pooled_output": None}]]
        return _text_pair(seed, one)
    return build


def _cond_with_mask(dim):
    """cond + an all-ones integer attention_mask (LTXV requires it: its forward has a
    positional ``attention_mask`` param; Lumina2 needs it to get ``num_tokens``)."""
    def build(seed, batch=1, txt_len=8):
        import torch

        def one(g):
            return [[_rand(g, batch, txt_len, dim),
                     {"pooled_output": None, "attention_mask": torch.ones(batch, txt_len, dtype=torch.long)}]]
        return _text_pair(seed, one)
    return build


def _cond_wan_i2v(seed, batch=1, txt_len=8):
    import torch

    latent_shape = ARCHS["wan21_i2v"].latent_shape
    g_img = _gen(seed + 100)
    # what WanImageToVideo puts in the conditioning: the VAE-encoded start image padded with
    # zeros over time, and a mask that is 0 on the given frames and 1 elsewhere.
    concat_latent = torch.zeros((batch,) + tuple(latent_shape[1:]))
    concat_latent[:, :, :1] = _rand(g_img, batch, latent_shape[1], 1, *latent_shape[3:])
    mask = torch.ones((batch, 1) + tuple(latent_shape[2:]))
    mask[:, :, :1] = 0.0
    clip_vision_output = types.SimpleNamespace(penultimate_hidden_states=_rand(g_img, batch, 257, 1280))

    def one(g):
        return [[_rand(g, batch, txt_len, 64), {
            "pooled_output": None,
            "concat_latent_image": concat_latent,
            "concat_mask": mask,
            "clip_vision_output": clip_vision_output,
        }]]
    return _text_pair(seed, one)


def _cond_hunyuan_video(seed, batch=1, txt_len=8):
    def one(g):
        return [[_rand(g, batch, txt_len, 64), {"pooled_output": _rand(g, batch, 32)}]]
    return _text_pair(seed, one)


def _cond_sd3(seed, batch=1, txt_len=8):
    def one(g):
        return [[_rand(g, batch, txt_len, 64), {"pooled_output": _rand(g, batch, 32)}]]
    return _text_pair(seed, one)


def _cond_hidream(seed, batch=1, txt_len=8):
    def one(g):
        # cond = T5 states [B, L, caption_channels[0]]; conditioning_llama3 = stacked llama
        # hidden states [B, n_llama_layers, L, caption_channels[1]]; pooled = CLIP-L+G pooled
        return [[_rand(g, batch, txt_len, 64), {
            "pooled_output": _rand(g, batch, 32),
            "conditioning_llama3": _rand(g, batch, 3, txt_len, 48),
        }]]
    return _text_pair(seed, one)


def _cond_sdxl(seed, batch=1, txt_len=77):
    def one(g):
        return [[_rand(g, batch, txt_len, 64), {"pooled_output": _rand(g, batch, 32)}]]
    return _text_pair(seed, one)


_ROPE32 = [8, 12, 12]  # sum == head_dim 32

ARCHS: dict[str, ArchSpec] = {}


def _add(spec: ArchSpec):
    ARCHS[spec.name] = spec


_add(ArchSpec(
    name="flux", config_cls="Flux", model_base_cls="Flux",
    unet_config=dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=64,
                     hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2,
                     axes_dim=_ROPE32, theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
    latent_shape=(1, 16, 16, 16), cond_fn=_cond_flux,
    block_lists=("double_blocks", "single_blocks"), dit_replace=True,
    replace_kinds=("double_block", "single_block"), diffusion_model_wrapper=True, wrapper_to_index=7,
    replace_io={"double_block": (("img", "txt", "vec", "pe", "attn_mask", "transformer_options"), ("img", "txt")),
                "single_block": (("img", "vec", "pe", "attn_mask", "transformer_options"), ("img",))},
    inplace={"double_block": ("txt",), "single_block": ("img",)},
))
_add(ArchSpec(
    name="chroma", config_cls="Chroma", model_base_cls="Chroma",
    unet_config=dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=64,
                     hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2,
                     axes_dim=_ROPE32, theta=10000, patch_size=2, qkv_bias=True,
                     in_dim=64, out_dim=64, hidden_dim=128, n_layers=2),
    latent_shape=(1, 16, 16, 16), cond_fn=_cond_chroma,
    block_lists=("double_blocks", "single_blocks"), dit_replace=True,
    replace_kinds=("double_block", "single_block"), diffusion_model_wrapper=True, wrapper_to_index=5,
    replace_io={"double_block": (("img", "txt", "vec", "pe", "attn_mask", "transformer_options"), ("img", "txt")),
                "single_block": (("img", "vec", "pe", "attn_mask", "transformer_options"), ("img",))},
    inplace={"double_block": ("img", "txt"), "single_block": ("img",)},
))
_add(ArchSpec(
    name="wan21_t2v", config_cls="WAN21_T2V", model_base_cls="WAN21",
    unet_config=dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16,
                     dim=64, ffn_dim=128, freq_dim=256, text_dim=64, out_dim=16, num_heads=2, num_layers=2,
                     window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6),
    latent_shape=(1, 16, 2, 8, 8), cond_fn=_cond_t5_only(64), is_video=True,
    block_lists=("blocks",), dit_replace=True, replace_kinds=("double_block",), diffusion_model_wrapper=True,
    wrapper_to_index=5, replace_io={"double_block": (("img", "txt", "vec", "pe", "transformer_options"), ("img",))},
))
_add(ArchSpec(
    name="wan21_i2v", config_cls="WAN21_I2V", model_base_cls="WAN21",
    unet_config=dict(image_model="wan2.1", model_type="i2v", patch_size=(1, 2, 2), text_len=512, in_dim=36,
                     dim=64, ffn_dim=128, freq_dim=256, text_dim=64, out_dim=16, num_heads=2, num_layers=2,
                     window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6),
    latent_shape=(1, 16, 2, 8, 8), cond_fn=_cond_wan_i2v, is_video=True,
    block_lists=("blocks",), dit_replace=True, replace_kinds=("double_block",), diffusion_model_wrapper=True,
    wrapper_to_index=5, replace_io={"double_block": (("img", "txt", "vec", "pe", "transformer_options"), ("img",))},
    notes="concat-channel i2v: 16 noise + 4 mask + 16 image channels = in_dim 36, plus CLIP-vision tokens",
))
_add(ArchSpec(
    name="qwen_image", config_cls="QwenImage", model_base_cls="QwenImage",
    unet_config=dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                     attention_head_dim=32, num_attention_heads=2, joint_attention_dim=64,
                     pooled_projection_dim=64, guidance_embeds=False, axes_dims_rope=(8, 12, 12)),
    # EmptySD3LatentImage gives [B,16,H,W]; fix_empty_latent_channels unsqueezes it to
    # [B,16,1,H,W] because latent_formats.Wan21 has latent_dimensions == 3.
    latent_shape=(1, 16, 16, 16), cond_fn=_cond_t5_only(64),
    block_lists=("transformer_blocks",), dit_replace=True, replace_kinds=("double_block",),
    diffusion_model_wrapper=True, wrapper_to_index=6,
    replace_io={"double_block": (("img", "txt", "vec", "pe", "transformer_options"), ("img", "txt"))},
))
_add(ArchSpec(
    name="hunyuan_video", config_cls="HunyuanVideo", model_base_cls="HunyuanVideo",
    unet_config=dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32,
                     context_in_dim=64, hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2,
                     depth_single_blocks=2, axes_dim=_ROPE32, theta=256, patch_size=[1, 2, 2], qkv_bias=True,
                     guidance_embed=True, byt5=False, meanflow=False),
    latent_shape=(1, 16, 2, 8, 8), cond_fn=_cond_hunyuan_video, is_video=True,
    block_lists=("double_blocks", "single_blocks"), dit_replace=True,
    replace_kinds=("double_block", "single_block"), diffusion_model_wrapper=True, wrapper_to_index=11,
    replace_io={"double_block": (("img", "txt", "vec", "pe", "attention_mask", "modulation_dims_img",
                                  "modulation_dims_txt", "transformer_options"), ("img", "txt")),
                "single_block": (("img", "vec", "pe", "attention_mask", "modulation_dims", "transformer_options"),
                                 ("img",))},
    inplace={"double_block": ("txt",), "single_block": ("img",)},
))
_add(ArchSpec(
    name="ltxv", config_cls="LTXV", model_base_cls="LTXV",
    unet_config=dict(image_model="ltxv", in_channels=128, cross_attention_dim=64, attention_head_dim=32,
                     num_attention_heads=2, caption_channels=64, num_layers=2),
    latent_shape=(1, 128, 2, 4, 4), cond_fn=_cond_with_mask(64), is_video=True,
    block_lists=("transformer_blocks",), dit_replace=True, replace_kinds=("double_block",),
    diffusion_model_wrapper=True, wrapper_to_index=5,
    replace_io={"double_block": (("img", "txt", "attention_mask", "vec", "pe", "transformer_options"), ("img",))},
    inplace={"double_block": ("img",)},
))
_add(ArchSpec(
    name="sd3", config_cls="SD3", model_base_cls="SD3",
    # depth=2 => hidden 128 (64*depth), 2 heads, 2 joint blocks (the last one is pre_only)
    unet_config=dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None,
                     adm_in_channels=32, pos_embed_scaling_factor=None, num_patches=256, pos_embed_max_size=16,
                     context_embedder_config={"target": "torch.nn.Linear",
                                              "params": {"in_features": 64, "out_features": 128}},
                     x_block_self_attn_layers=[]),
    latent_shape=(1, 16, 16, 16), cond_fn=_cond_sd3,
    block_lists=("joint_blocks",), dit_replace=True, replace_kinds=("double_block",),
    diffusion_model_wrapper=False,
    replace_io={"double_block": (("img", "txt", "vec", "transformer_options"), ("img", "txt"))},
    notes="the last joint block is pre_only: its replace patch returns txt=None",
))
_add(ArchSpec(
    name="lumina2", config_cls="Lumina2", model_base_cls="Lumina2",
    unet_config=dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, cap_feat_dim=64, n_layers=2,
                     n_refiner_layers=1, n_heads=2, n_kv_heads=1, multiple_of=16, qk_norm=True,
                     axes_dims=_ROPE32, axes_lens=[300, 512, 512]),
    latent_shape=(1, 16, 16, 16), cond_fn=_cond_with_mask(64),
    block_lists=("layers", "noise_refiner", "context_refiner"), dit_replace=False, replace_kinds=(),
    diffusion_model_wrapper=True, wrapper_to_index=None,
))
_add(ArchSpec(
    name="hidream", config_cls="HiDream", model_base_cls="HiDream",
    unet_config=dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                     num_single_layers=2, attention_head_dim=32, num_attention_heads=2,
                     caption_channels=[64, 48], text_emb_dim=32, num_routed_experts=4, num_activated_experts=2,
                     axes_dims_rope=[16, 8, 8], max_resolution=[128, 128], llama_layers=[0, 1, 2, 2]),
    latent_shape=(1, 16, 16, 16), cond_fn=_cond_hidream,
    block_lists=("double_stream_blocks", "single_stream_blocks"), dit_replace=False, replace_kinds=(),
    diffusion_model_wrapper=True, wrapper_to_index=7,
))
_add(ArchSpec(
    name="sdxl", config_cls="SDXL", model_base_cls="SDXL",
    unet_config=dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                     num_classes="sequential", adm_in_channels=32 + 6 * 256, in_channels=4, model_channels=32,
                     num_res_blocks=[1, 1], transformer_depth=[0, 1], channel_mult=[1, 2],
                     transformer_depth_middle=1, use_linear_in_transformer=True, context_dim=64,
                     transformer_depth_output=[0, 0, 1, 1], use_temporal_attention=False,
                     use_temporal_resblock=False),
    latent_shape=(1, 4, 16, 16), cond_fn=_cond_sdxl,
    block_lists=("input_blocks", "middle_block", "output_blocks"), dit_replace=False, replace_kinds=(),
    diffusion_model_wrapper=True, wrapper_to_index=5,
    notes="SDXL adm = pooled_output (32 here, 1280 real) + 6*256 size embeddings",
))


# --------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------

def _init_weights_(module, seed: int, gain: float = 1.0) -> None:
    """Seeded init of every parameter (ComfyUI's ops.disable_weight_init leaves them as
    torch.empty garbage): norm layers -> weight/scale 1, bias 0; other tensors with ndim>=2
    -> N(0, gain/sqrt(fan_in)); other 1-D tensors -> N(0, 0.02). Also fills buffers that
    are created with torch.empty (SD3's pos_embed)."""
    import torch

    g = _gen(seed)
    done = set()
    with torch.no_grad():
        for m in module.modules():
            if "norm" in type(m).__name__.lower():
                for n, p in m.named_parameters(recurse=False):
                    if n in ("weight", "scale"):
                        p.fill_(1.0)
                    else:
                        p.zero_()
                    done.add(id(p))
        for name, p in module.named_parameters():
            if id(p) in done:
                continue
            if p.ndim >= 2:
                std = gain / math.sqrt(max(1, p[0].numel()))
            else:
                std = 0.02
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
        for name, b in module.named_buffers():
            if name.endswith("pos_embed") and b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float32).to(b.dtype) * 0.02)


def build_model(arch: str, seed: int = 0, unet_overrides: dict | None = None):
    """Build a tiny, randomly initialised (seeded), fp32, CPU ComfyUI model for ``arch``,
    wrapped exactly as ``comfy.sd.load_diffusion_model_state_dict`` does it:
    ``supported_models.<Config>(unet_config)`` -> ``set_inference_dtype(fp32, None)`` ->
    ``config.get_model({}, "")`` (a ``comfy.model_base.BaseModel`` subclass whose
    ``.diffusion_model`` is the comfy.ldm network) -> ``ModelPatcher(model, cpu, cpu)``.
    """
    ensure_comfy()
    import torch
    import comfy.model_patcher
    import comfy.supported_models

    spec = ARCHS[arch]
    unet_config = dict(spec.unet_config)
    if unet_overrides:
        unet_config.update(unet_overrides)
    config = getattr(comfy.supported_models, spec.config_cls)(unet_config)
    config.set_inference_dtype(torch.float32, None)
    device = torch.device("cpu")
    model = config.get_model({}, "", device=device)
    _init_weights_(model.diffusion_model, seed)
    model = model.to(device)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def make_conditioning(arch: str, seed: int = 1234, batch: int = 1):
    """(positive, negative) CONDITIONING lists for ``arch`` (random text-encoder outputs)."""
    return ARCHS[arch].cond_fn(seed, batch=batch)


def empty_latent(arch: str, batch: int = 1) -> dict:
    """What ComfyUI's matching empty-latent node returns: ``{"samples": zeros}``
    (EmptyLatentImage / EmptySD3LatentImage / EmptyHunyuanLatentVideo / EmptyLTXVLatentVideo)."""
    import torch

    shape = (batch,) + tuple(ARCHS[arch].latent_shape[1:])
    return {"samples": torch.zeros(shape)}


def model_input_shape(model_patcher, latent) -> tuple:
    """Shape the sampler (and so the output) will have: ``comfy.sample.fix_empty_latent_channels``
    turns Qwen-Image's 4-D empty latent into 5-D [B,C,1,H,W]."""
    ensure_comfy()
    import comfy.sample

    samples = latent["samples"] if isinstance(latent, dict) else latent
    return tuple(comfy.sample.fix_empty_latent_channels(model_patcher, samples).shape)


def sample(model_patcher, *, steps: int, cfg: float, sampler_name: str = "euler", scheduler: str = "simple",
           seed: int = 0, latent, positive, negative, denoise: float = 1.0, via: str = "ksampler_node"):
    """Sample like a KSampler node and return the output latent tensor.

    ``via="ksampler_node"`` calls ``nodes.common_ksampler`` (what ``KSampler.sample`` calls);
    ``via="comfy.sample"`` replicates it without importing ``nodes`` (fix_empty_latent_channels
    -> prepare_noise -> comfy.sample.sample). Both run under ``torch.inference_mode()`` like
    ComfyUI's executor (execution.py: PromptExecutor.execute_async).
    """
    ensure_comfy()
    import torch

    if not isinstance(latent, dict):
        latent = {"samples": latent}
    with torch.inference_mode():
        if via == "ksampler_node":
            import nodes

            (out,) = nodes.common_ksampler(model_patcher, seed, steps, cfg, sampler_name, scheduler,
                                           positive, negative, latent, denoise=denoise)
            return out["samples"]
        elif via == "comfy.sample":
            import comfy.sample

            latent_image = comfy.sample.fix_empty_latent_channels(model_patcher, latent["samples"])
            noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
            return comfy.sample.sample(model_patcher, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                       latent_image, denoise=denoise, noise_mask=latent.get("noise_mask"),
                                       disable_pbar=True, seed=seed)
        raise ValueError(f"unknown via={via!r}")
