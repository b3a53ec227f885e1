"""Smoke tests of the tiny ComfyUI-native models in harness.py, and executable checks of
the hook-point table in its docstring (block replace patches, DIFFUSION_MODEL wrappers,
transformer_options contents, in-place mutation of block inputs)."""

from __future__ import annotations

import pytest

from .harness import ARCHS

ARCH_NAMES = list(ARCHS)


def _run(h, model, arch, *, seed=0, steps=3, cfg=2.0, sampler_name="euler", via="ksampler_node"):
    pos, neg = h.make_conditioning(arch)
    latent = h.empty_latent(arch)
    return h.sample(model, steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler="simple", seed=seed,
                    latent=latent, positive=pos, negative=neg, via=via)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_smoke_sample(comfy_harness, arch):
    import torch

    h = comfy_harness
    spec = ARCHS[arch]
    model = h.build_model(arch, seed=0)

    assert type(model.model).__name__ == spec.model_base_cls
    dm = model.model.diffusion_model
    for attr in spec.block_lists:
        assert hasattr(dm, attr), f"{arch}: diffusion_model has no {attr}"

    latent = h.empty_latent(arch)
    expected = h.model_input_shape(model, latent)
    assert len(expected) == (5 if (spec.is_video or arch == "qwen_image") else 4)

    out1 = _run(h, model, arch, seed=7)
    assert tuple(out1.shape) == expected
    assert out1.dtype == torch.float32
    assert torch.isfinite(out1).all()
    assert out1.abs().max() > 0

    out2 = _run(h, model, arch, seed=7)
    assert torch.equal(out1, out2), f"{arch}: same seed gave different outputs"

    out3 = _run(h, model, arch, seed=8)
    assert not torch.equal(out1, out3), f"{arch}: the seed does not change the output"


@pytest.mark.parametrize("arch", ["flux", "wan21_t2v", "sdxl"])
def test_build_is_seeded_and_both_sample_paths_agree(comfy_harness, arch):
    import torch

    h = comfy_harness
    a = h.build_model(arch, seed=3).model.diffusion_model.state_dict()
    b = h.build_model(arch, seed=3).model.diffusion_model.state_dict()
    c = h.build_model(arch, seed=4).model.diffusion_model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)

    model = h.build_model(arch, seed=3)
    via_node = _run(h, model, arch, seed=1, steps=2, via="ksampler_node")
    via_sample = _run(h, model, arch, seed=1, steps=2, via="comfy.sample")
    assert torch.equal(via_node, via_sample)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_hook_points_match_table(comfy_harness, arch):
    """Pass-through replace patches on every block + a pass-through DIFFUSION_MODEL wrapper
    must be honoured exactly as ArchSpec says, and must not change the output."""
    import torch
    import comfy.patcher_extension as pe

    h = comfy_harness
    spec = ARCHS[arch]
    model = h.build_model(arch, seed=0)
    baseline = _run(h, model, arch, seed=5, steps=2)

    patched = model.clone()
    dm = model.model.diffusion_model
    seen = {}

    for kind, attr in zip(spec.replace_kinds, spec.block_lists):
        for i in range(len(getattr(dm, attr))):
            def patch(args, extra, kind=kind, i=i):
                snap = {k: v.clone() for k, v in args.items() if torch.is_tensor(v)}
                out = extra["original_block"](args)
                mutated = tuple(sorted(k for k, v in snap.items() if not torch.equal(v, args[k])))
                seen.setdefault((kind, i), (set(args), set(out), mutated))
                return out

            patched.set_model_patch_replace(patch, "dit", kind, i)

    wrapper_calls = []

    def wrapper(executor, *args, **kwargs):
        if spec.wrapper_to_index is None:
            to = kwargs["transformer_options"]
        else:
            to = args[spec.wrapper_to_index]
        wrapper_calls.append({k: to.get(k) for k in ("sigmas", "sample_sigmas", "cond_or_uncond", "uuids")})
        return executor(*args, **kwargs)

    patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "harness-probe", wrapper)

    out = _run(h, patched, arch, seed=5, steps=2)
    assert torch.equal(out, baseline), f"{arch}: pass-through hooks changed the output"

    # replace patches
    expected_keys = {(kind, i) for kind, attr in zip(spec.replace_kinds, spec.block_lists)
                     for i in range(len(getattr(dm, attr)))}
    assert set(seen) == expected_keys
    for (kind, i), (arg_keys, out_keys, mutated) in seen.items():
        exp_args, exp_out = spec.replace_io[kind]
        assert arg_keys == set(exp_args), (kind, i, arg_keys)
        assert out_keys == set(exp_out), (kind, i, out_keys)
        assert mutated == tuple(sorted(spec.inplace.get(kind, ()))), (kind, i, mutated)

    # DIFFUSION_MODEL wrappers
    if not spec.diffusion_model_wrapper:
        assert wrapper_calls == []
        return
    # cond and uncond are batched into one call per step here: 2 steps -> 2 calls
    assert len(wrapper_calls) == 2
    first = wrapper_calls[0]
    assert first["cond_or_uncond"] == [1, 0]
    assert len(first["uuids"]) == 2
    assert torch.is_tensor(first["sigmas"]) and first["sigmas"].shape == (1,)
    assert torch.is_tensor(first["sample_sigmas"]) and first["sample_sigmas"].shape == (3,)
    assert float(first["sigmas"][0]) == float(first["sample_sigmas"][0])
    assert float(wrapper_calls[1]["sigmas"][0]) == float(first["sample_sigmas"][1])
    assert wrapper_calls[1]["uuids"] == first["uuids"]
