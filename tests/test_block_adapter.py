"""BlockAdapter / ForwardPattern / ParamsModifier: your own transformer, cached through the adapter.

What cache-dit's own API tests cover (every pattern with random blocks over 16/28/50 steps,
refresh_context between runs of different lengths), pipelines that call transformers without
timesteps, two transformers, the helpers around adapters, and the errors of bad input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cachedit
from cachedit import BlockAdapter, DBCacheConfig, ForwardPattern, ParamsModifier
from cachedit.manager import pipe_hooks
from cachedit.manager.patterns import PatternMismatchError
from tiny_dits import DIM, PATTERNS, LoopPipeline, TinyDiT, sample

ALWAYS_REUSE = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1e6)  # after warmup


def _forwards_hooked(model: nn.Module) -> int:
    return sum("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("steps", [16, 28, 50])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_random_blocks_every_pattern_reuse_exactly_after_warmup(pattern, steps):
    model = TinyDiT(pattern, num_blocks=8, random_blocks=True)
    torch.manual_seed(1)
    reference = sample(model, pattern, steps)
    for block in model.blocks:
        block.calls = 0
    adapter = cachedit.enable_cache(BlockAdapter(transformer=model, blocks=model.blocks,
                                                 forward_pattern=getattr(ForwardPattern, pattern)),
                                    cache_config=DBCacheConfig(max_warmup_steps=4, **ALWAYS_REUSE))
    assert adapter.transformer is model  # enable_cache returns the adapter, unchanged
    torch.manual_seed(1)
    out = sample(model, pattern, steps)
    stats = cachedit.summary(model, logging=False)
    assert len(stats) == 1 and stats[0].cached_steps == list(range(4, steps))
    assert stats[0].accumulated_executed_steps == steps
    assert [b.calls for b in model.blocks] == [steps] + [4] * 7  # block 0 always (Fn=1), the rest in warmup only
    assert out.shape == reference.shape and torch.isfinite(out).all()
    cachedit.disable_cache(adapter)
    assert _forwards_hooked(model) == 0
    torch.manual_seed(1)
    assert torch.equal(sample(model, pattern, steps), reference)  # disabled: the original model exactly


def test_refresh_context_between_runs_of_different_lengths_without_timesteps():
    model = TinyDiT("Pattern_3")
    adapter = cachedit.enable_cache(BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern=ForwardPattern.Pattern_3),
                                    cache_config=DBCacheConfig(max_warmup_steps=3, **ALWAYS_REUSE))
    runs = []
    for i, steps in enumerate((16, 28, 50)):
        mask = cachedit.steps_mask(mask_policy="fast", total_steps=steps)
        if i == 0:
            cachedit.refresh_context(model, num_inference_steps=steps, verbose=True)
        else:
            cachedit.refresh_context(adapter, cache_config=DBCacheConfig(
                num_inference_steps=steps, steps_computation_mask=mask, steps_computation_policy="dynamic",
                max_warmup_steps=3, **ALWAYS_REUSE))
        sample(model, "Pattern_3", steps, timesteps=False)
        runs.append((cachedit.summary(model, logging=False)[0].cached_steps, mask))
    assert runs[0][0] == list(range(3, 16))
    for reused, mask in runs[1:]:
        assert reused == [s for s, m in enumerate(mask) if m == 0]  # the mask's reuse steps, each run from step 0
    cachedit.disable_cache(adapter)


def test_pipeline_calls_are_runs_and_two_transformers_get_their_own_contexts():
    t1, t2 = TinyDiT("Pattern_2", seed=1), TinyDiT("Pattern_2", seed=2)
    pipe = LoopPipeline(t1, t2)
    original_call = LoopPipeline.__dict__["__call__"]
    reference = pipe(num_inference_steps=12)
    adapter = BlockAdapter(pipe=pipe, transformer=[t1, t2], blocks=[t1.blocks, t2.blocks],
                           forward_pattern=[ForwardPattern.Pattern_2, ForwardPattern.Pattern_2],
                           params_modifiers=[ParamsModifier(cache_config=DBCacheConfig().reset(max_warmup_steps=2)),
                                             ParamsModifier(cache_config=DBCacheConfig().reset(max_warmup_steps=4))])
    cachedit.enable_cache(adapter, cache_config=DBCacheConfig(**ALWAYS_REUSE))
    assert pipe_hooks.is_hooked(pipe)
    for _ in range(2):  # no timesteps, no num_inference_steps: each pipeline call still starts clean
        pipe(num_inference_steps=12)
        high, low = cachedit.summary(pipe, logging=False)
        assert (high.cached_steps, low.cached_steps) == ([2, 3, 4, 5], [4, 5])
    assert [s.name for s in cachedit.summary(adapter, logging=False)] == ["TinyDiT.blocks", "TinyDiT.blocks"]
    assert high.accumulated_cached_steps == 8  # both calls
    assert cachedit.strify(pipe) == "DBCache_F1B0_W2I1M0MC0_R1000000.0_T0O0_S8"
    cachedit.disable_cache(pipe)
    assert not pipe_hooks.is_hooked(pipe) and LoopPipeline.__dict__["__call__"] is original_call
    assert _forwards_hooked(t1) == _forwards_hooked(t2) == 0
    assert torch.equal(pipe(num_inference_steps=12), reference)


def test_without_a_pipeline_runs_continue_until_num_inference_steps():
    model = TinyDiT("Pattern_2")
    pipe = LoopPipeline(model)
    cachedit.enable_cache(BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern=ForwardPattern.Pattern_2),
                          cache_config=DBCacheConfig(max_warmup_steps=2, **ALWAYS_REUSE))
    pipe(num_inference_steps=6)
    pipe(num_inference_steps=6)  # cache-dit's persistent context: the second call continues the first run
    assert cachedit.summary(model, logging=False)[0].cached_steps == list(range(2, 12))
    cachedit.disable_cache(model)


def test_own_dit_in_a_few_lines_as_the_readme_shows():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(DIM, DIM), nn.GELU(), nn.Linear(DIM, DIM))

        def forward(self, hidden_states, t):
            return hidden_states + 0.2 * self.mlp(hidden_states + t)

    class MyDiT(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layers = nn.ModuleList([Block() for _ in range(8)])

        def forward(self, x, timestep):
            t = (timestep / 1000).reshape(-1, 1, 1)
            for layer in self.layers:
                x = layer(x, t)
            return x

    def generate(model):
        x = torch.randn(2, 8, DIM, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for t in torch.linspace(1000, 40, 25):
                x = x - 0.04 * model(x, t.expand(2))
        return x

    model = MyDiT()
    reference = generate(model)
    cachedit.enable_cache(BlockAdapter(transformer=model, blocks=model.layers, forward_pattern=ForwardPattern.Pattern_3),
                          cache_config=DBCacheConfig(Fn_compute_blocks=1, residual_diff_threshold=0.05, max_warmup_steps=4))
    images = generate(model)
    stats = cachedit.summary(model, logging=False)[0]
    assert 5 <= len(stats.cached_steps) <= 20 and stats.blocks_skipped == 7 * len(stats.cached_steps)
    assert (images - reference).abs().max().item() < 0.05
    cachedit.disable_cache(model)
    assert torch.equal(generate(model), reference)


def test_blocks_name_auto_and_the_learned_codec():
    model = TinyDiT("Pattern_0")
    by_name = BlockAdapter(transformer=model, blocks_name="blocks", forward_pattern=ForwardPattern.Pattern_0)
    assert [p.names for p in by_name.plan()] == [["blocks"]] and by_name.plan()[0].blocks[0] is model.blocks
    auto = BlockAdapter(transformer=model, forward_pattern=ForwardPattern.Pattern_0, auto=True)
    assert auto.plan()[0].blocks[0] is model.blocks
    normalized = BlockAdapter.normalize(by_name)
    assert normalized.transformer == [model] and normalized.blocks_name == [["blocks"]]
    assert BlockAdapter.nested_depth([[model.blocks]]) == 2 and BlockAdapter.flatten([[1, 2], [3]]) == [1, 2, 3]

    results = {}
    for label, pattern in (("declared", ForwardPattern.Pattern_0), ("learned", None)):  # None: BlockIO learns it
        m = TinyDiT("Pattern_0")
        cachedit.enable_cache(BlockAdapter(transformer=m, blocks=m.blocks, forward_pattern=pattern),
                              cache_config=DBCacheConfig(Fn_compute_blocks=1, residual_diff_threshold=0.05, max_warmup_steps=3))
        out = sample(m, "Pattern_0", 20)
        results[label] = (cachedit.summary(m, logging=False)[0].cached_steps, out)
        cachedit.disable_cache(m)
    assert results["declared"][0] == results["learned"][0] and len(results["declared"][0]) > 0
    assert torch.equal(results["declared"][1], results["learned"][1])


def test_get_adapter_describes_what_enable_cache_finds(tiny_flux):
    from conftest import make_tiny_flux, sample as flux_sample

    adapter = cachedit.get_adapter(tiny_flux)
    assert adapter.blocks_name == "transformer_blocks+single_transformer_blocks" and len(adapter.blocks) == 6
    config = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.3, max_warmup_steps=2)
    cachedit.enable_cache(adapter, cache_config=DBCacheConfig(**config))
    flux_sample(tiny_flux, steps=12)
    via_adapter = cachedit.summary(tiny_flux, logging=False)[0].cached_steps
    other = make_tiny_flux()
    cachedit.enable_cache(other, cache_config=DBCacheConfig(**config))
    flux_sample(other, steps=12)
    assert via_adapter == cachedit.summary(other, logging=False)[0].cached_steps == [5, 7, 8, 10]
    cachedit.disable_cache(other)


def test_supported_pipelines_are_found_without_an_adapter():
    import diffusers

    from cachedit.manager.blocks import find_block_lists
    from cachedit.recognised import RECOGNISED_TRANSFORMERS

    count, names = cachedit.supported_pipelines()
    assert count == len(names) == len(RECOGNISED_TRANSFORMERS)
    tiny = {
        "ChromaTransformer2DModel": dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                         num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4),
                                         approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1),
        "SD3Transformer2DModel": dict(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                                      num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                      pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16),
        "WanTransformer3DModel": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                      out_channels=4, text_dim=16, freq_dim=16, ffn_dim=16, num_layers=2),
        "Lumina2Transformer2DModel": dict(sample_size=8, patch_size=1, in_channels=4, hidden_size=16, num_layers=2,
                                          num_refiner_layers=1, num_attention_heads=2, num_kv_heads=2, cap_feat_dim=16,
                                          axes_dim_rope=(4, 2, 2), axes_lens=(8, 8, 8)),
    }
    for name, config in tiny.items():
        model = getattr(diffusers, name)(**config)
        assert tuple(n for n, _ in find_block_lists(model)) == RECOGNISED_TRANSFORMERS[name], name


def test_block_range_matches_cache_dit():
    cache_dit = pytest.importorskip("cache_dit")
    for args in [(0, 10, 2), (2, 28, 3), (5, 3, 2), (0, 0, 2), (0, 10, 1), (1, 19, 4)]:
        assert cachedit.block_range(*args) == cache_dit.block_range(*args), args


def test_cache_dit_names_are_here_or_say_why_not():
    cache_dit = pytest.importorskip("cache_dit")
    from cachedit.scope import OUT_OF_SCOPE

    public = {n for n in dir(cache_dit) if not n.startswith("_") and not isinstance(getattr(cache_dit, n), type(cache_dit))}
    not_yet = {"ParallelismConfig", "version_tuple"}  # multi-GPU: other work
    assert set(OUT_OF_SCOPE) <= public
    missing = sorted(n for n in public if not hasattr(cachedit, n) and n not in OUT_OF_SCOPE and n not in not_yet)
    assert missing == []
    for name in OUT_OF_SCOPE:
        with pytest.raises(AttributeError, match=rf"has no attribute '{name}': it belongs to cache-dit's .*out of scope"):
            getattr(cachedit, name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'$"):
        cachedit.no_such_name  # noqa: B018


def test_bad_input_errors_name_parameter_value_and_allowed():
    model = TinyDiT("Pattern_3")
    with pytest.raises(ValueError, match=r"forward_pattern=ForwardPattern.Pattern_0 does not match TinyDiT.blocks\[0\]: "
                                         r"PatternBlock3.forward\(hidden_states, temb\) has no parameter encoder_hidden_states; "
                                         r"allowed: a pattern its forward fits: Pattern_3, Pattern_4, Pattern_5"):
        cachedit.enable_cache(BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern=ForwardPattern.Pattern_0,
                                           check_forward_pattern=True))
    with pytest.raises(TypeError, match=r"BlockAdapter blocks\[0\] of TinyDiT is Linear; allowed: a non-empty torch.nn.ModuleList"):
        BlockAdapter(transformer=model, blocks=model.proj_out, forward_pattern=ForwardPattern.Pattern_3).plan()
    with pytest.raises(TypeError, match=r"blocks_name='nope' of TinyDiT is NoneType; allowed"):
        BlockAdapter(transformer=model, blocks_name="nope").plan()
    with pytest.raises(TypeError, match=r"forward_pattern='Pattern_9' is invalid; allowed: Pattern_0, .*Pattern_5"):
        BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern="Pattern_9").plan()
    with pytest.raises(ValueError, match=r"3 patterns for 1 block lists of transformer\[0\]; allowed: one pattern, or one per"):
        BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern=[ForwardPattern.Pattern_3] * 3).plan()
    with pytest.raises(ValueError, match=r"neither blocks nor blocks_name; allowed"):
        BlockAdapter(transformer=model).plan()
    with pytest.raises(TypeError, match=r"transformer\[0\]=str is invalid; allowed: a torch.nn.Module"):
        BlockAdapter(transformer="model")
    with pytest.raises(ValueError, match=r"repeats a block of TinyDiT.blocks; allowed: each block in one list only"):
        BlockAdapter(transformer=model, blocks=[model.blocks, model.blocks], forward_pattern=ForwardPattern.Pattern_3).plan()
    p4 = TinyDiT("Pattern_4")
    with pytest.raises(ValueError, match=r"Fn_compute_blocks=0 with forward_pattern=ForwardPattern.Pattern_4 .*allowed: >= 1"):
        cachedit.enable_cache(BlockAdapter(transformer=p4, blocks=p4.blocks, forward_pattern=ForwardPattern.Pattern_4),
                              cache_config=DBCacheConfig(Fn_compute_blocks=0))
    assert _forwards_hooked(p4) == 0  # nothing hooked when the adapter is refused
    with pytest.raises(TypeError, match=r"ParamsModifier got Fn_blocks=1; allowed: cache_config, calibrator_config, Fn_compute_blocks"):
        ParamsModifier(Fn_blocks=1)
    with pytest.raises(TypeError, match=r"ParamsModifier cache_config=3 is invalid; allowed: a DBCacheConfig or None"):
        ParamsModifier(cache_config=3)
    with pytest.raises(TypeError, match=r"params_modifiers='x' is invalid; allowed: a ParamsModifier, a list of them"):
        cachedit.enable_cache(BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern=ForwardPattern.Pattern_3),
                              params_modifiers="x")


def test_a_block_that_returns_another_layout_than_declared_fails_clearly():
    model = TinyDiT("Pattern_4")  # returns (hidden, encoder), declared as Pattern_3 (hidden only), check off
    cachedit.enable_cache(BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern=ForwardPattern.Pattern_3,
                                       check_forward_pattern=False), cache_config=DBCacheConfig(**ALWAYS_REUSE))
    with pytest.raises(PatternMismatchError, match=r"forward_pattern=ForwardPattern.Pattern_3 does not match the blocks of "
                                                   r"TinyDiT.blocks: a block returned 2 outputs; Pattern_3 returns \('hidden_states',\)"):
        sample(model, "Pattern_4", 2)
    swapped = TinyDiT("Pattern_0")  # returns (hidden, encoder), declared as Pattern_1 (encoder, hidden)
    cachedit.enable_cache(BlockAdapter(transformer=swapped, blocks=swapped.blocks, forward_pattern=ForwardPattern.Pattern_1,
                                       check_forward_pattern=False))
    with pytest.raises(PatternMismatchError, match=r"returned hidden_states at position 0 \(shape \(2, 8, 16\)\), not at 1"):
        sample(swapped, "Pattern_0", 2)


def test_check_forward_pattern_defaults_as_cache_dit():
    assert BlockAdapter(transformer=TinyDiT("Pattern_3"), blocks_name="blocks").check_forward_pattern is False
    from conftest import make_tiny_flux

    flux = make_tiny_flux()
    assert BlockAdapter(transformer=flux, blocks_name="transformer_blocks").check_forward_pattern is True


def test_enable_twice_replaces_the_first_and_disable_restores():
    model = TinyDiT("Pattern_0")
    reference = sample(model, "Pattern_0", 12)
    adapter = BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern=ForwardPattern.Pattern_0,
                           check_forward_pattern=True)
    cachedit.enable_cache(adapter, cache_config=DBCacheConfig(max_warmup_steps=2, **ALWAYS_REUSE))
    cachedit.enable_cache(adapter, cache_config=DBCacheConfig(max_warmup_steps=5, **ALWAYS_REUSE))  # hooks in place
    sample(model, "Pattern_0", 12)
    assert cachedit.summary(adapter, logging=False)[0].cached_steps == list(range(5, 12))
    assert len(cachedit.get_manager().entries()) == 1
    cachedit.disable_cache(adapter)
    assert _forwards_hooked(model) == 0 and torch.equal(sample(model, "Pattern_0", 12), reference)


@pytest.mark.parametrize("name", ["BlockAdapter", "ForwardPattern", "ParamsModifier", "load_configs", "load_cache_config",
                                  "load_options", "load_parallelism_config", "supported_pipelines", "get_adapter",
                                  "block_range"])
def test_new_public_names_are_cache_dits_and_documented(name):
    cache_dit = pytest.importorskip("cache_dit")
    assert hasattr(cache_dit, name) and name in cachedit.__all__
    assert getattr(cachedit, name).__doc__.strip()
