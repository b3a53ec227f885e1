"""CacheDit's hooks compose with other libraries' instance-level wrappers (diffusers' hook
registry, accelerate-style offload wrappers) in either order, and disable_cache puts back exactly
what was there; one model sampled from two threads at once gives what running them one after the
other gives."""

from __future__ import annotations

import functools
import threading

import torch

import cachedit
from conftest import flux_inputs, make_tiny_flux, sample

FIXED = dict(strategy="fixed", skip_interval=2, warmup_steps=2)


def _diffusers_scale_hook(module, name="scale_input", factor=1.0):
    """A diffusers ModelHook that scales hidden_states by `factor` and counts its calls."""
    from diffusers.hooks import HookRegistry, ModelHook

    class Scale(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Scale.calls += 1
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = kwargs["hidden_states"] * factor
            return args, kwargs

    hook = Scale()
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    return hook


def _accelerate_style_wrapper(module, calls):
    """What accelerate's add_hook_to_module does: an instance-level partial over the old forward."""
    old = module.forward

    def new_forward(mod, *args, **kwargs):
        calls.append(type(mod).__name__)
        return old(*args, **kwargs)

    module._old_forward = old
    module.forward = functools.update_wrapper(functools.partial(new_forward, module), old)
    return module.forward


def test_cache_installed_over_existing_wrappers_and_removed_back_to_them():
    from diffusers.hooks import HookRegistry

    model = make_tiny_flux()
    reference = sample(make_tiny_flux(), steps=6)
    hook = _diffusers_scale_hook(model)
    block_calls = []
    block = model.single_transformer_blocks[1]
    block_wrapper = _accelerate_style_wrapper(block, block_calls)
    model_wrapper = model.__dict__["forward"]
    assert torch.equal(sample(model, steps=6), reference)  # identity hooks: same output

    cachedit.enable_cache(model, **FIXED)
    calls_before = type(hook).calls
    block_calls.clear()
    out = sample(model, steps=6)
    s = cachedit.summary(model, logging=False)[0]
    assert s.cached_steps == [3, 5] and not torch.equal(out, reference)
    assert type(hook).calls - calls_before == 6  # diffusers' hook still runs on every model call
    assert len(block_calls) == 4  # the block runs (through its wrapper) on computed steps only

    cachedit.disable_cache(model)
    assert model.__dict__["forward"] is model_wrapper and block.__dict__["forward"] is block_wrapper
    assert torch.equal(sample(model, steps=6), reference)
    HookRegistry.check_if_exists_or_initialize(model).remove_hook("scale_input")
    restored = model.__dict__.get("forward")  # diffusers puts back the bound class forward it wrapped
    assert restored is None or restored.__func__ is type(model).forward


def test_wrappers_installed_over_the_cache_keep_working_after_it_is_removed():
    from diffusers.hooks import HookRegistry

    model = make_tiny_flux()
    reference = sample(make_tiny_flux(), steps=6)
    cachedit.enable_cache(model, **FIXED)
    ours = model.__dict__["forward"]
    hook = _diffusers_scale_hook(model)  # wraps our forward
    calls = type(hook).calls
    sample(model, steps=6)
    assert cachedit.summary(model, logging=False)[0].cached_steps == [3, 5] and type(hook).calls - calls == 6
    cachedit.disable_cache(model)
    # ours stays inside diffusers' chain, passing through: the model computes every step again
    assert torch.equal(sample(model, steps=6), reference)
    HookRegistry.check_if_exists_or_initialize(model).remove_hook("scale_input")
    assert model.__dict__["forward"] is ours  # what diffusers wrapped, put back by diffusers
    assert torch.equal(sample(model, steps=6), reference)


def test_enable_twice_and_refresh_keep_other_wrappers():
    model = make_tiny_flux()
    calls = []
    wrapper = _accelerate_style_wrapper(model, calls)
    cachedit.enable_cache(model, **FIXED)
    cachedit.enable_cache(model)  # a second enable replaces ours, not theirs
    cachedit.refresh_context(model, num_inference_steps=6)
    sample(model, steps=6)
    assert len(calls) == 6
    cachedit.disable_cache(model)
    assert model.__dict__["forward"] is wrapper


def _stepwise(model, seed: int, steps: int, barrier: threading.Barrier = None):
    """Euler loop like conftest.sample, waiting at `barrier` before every step."""
    x, enc, pooled, img_ids, txt_ids = flux_inputs(2, 16, seed)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        for i in range(steps):
            if barrier is not None:
                barrier.wait(timeout=30)
            v = model(hidden_states=x, encoder_hidden_states=enc, pooled_projections=pooled,
                      timestep=sigmas[i].expand(2), img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def test_one_model_sampled_from_two_threads_equals_running_them_in_turn():
    model = make_tiny_flux()
    cachedit.enable_cache(model, residual_diff_threshold=0.9, Fn_compute_blocks=1, max_warmup_steps=2,
                          max_continuous_cached_steps=2, enable_taylorseer=True)
    expected = [_stepwise(model, seed, 10) for seed in (0, 1)]
    reused = cachedit.summary(model, logging=False)[0].accumulated_cached_steps
    assert reused > 0
    barrier = threading.Barrier(2)
    results = [None, None]
    errors = []

    def worker(k: int) -> None:
        try:
            results[k] = _stepwise(model, k, 10, barrier)
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(not t.is_alive() for t in threads)
    assert torch.equal(results[0], expected[0]) and torch.equal(results[1], expected[1])
    assert cachedit.summary(model, logging=False)[0].accumulated_cached_steps == 2 * reused
    cachedit.disable_cache(model)
