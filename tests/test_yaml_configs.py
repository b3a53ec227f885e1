"""cache-dit's YAML config files: load_configs / load_cache_config / load_options / load_parallelism_config.

The files are written here with the keys of cache-dit's examples (tests/api/config.yaml,
examples/configs/*.yaml, bench/cache/*.yaml); where cache-dit reads the same file, both agree.
"""

from __future__ import annotations

import logging

import pytest

import cachedit
from tiny_dits import TinyDiT, sample

API_TEST_CONFIG = """\
cache_config:
  max_warmup_steps: 8
  warmup_interval: 2
  max_cached_steps: -1
  max_continuous_cached_steps: 2
  Fn_compute_blocks: 1
  Bn_compute_blocks: 0
  num_inference_steps: 28
  steps_computation_mask: fast
  residual_diff_threshold: 0.12
  enable_taylorseer: true
  taylorseer_order: 1
parallelism_config:
  ulysses_size: 2
  parallel_kwargs:
    attention_backend: native
    extra_parallel_modules: ["text_encoder", "vae"]
"""
COMBINED = """\
cache_config:
  max_warmup_steps: 8
  warmup_interval: 2
  Fn_compute_blocks: 1
  Bn_compute_blocks: 0
  residual_diff_threshold: 0.12
  enable_taylorseer: true
  taylorseer_order: 1
parallelism_config:
  ulysses_size: auto
  attention_backend: native
  extra_parallel_modules: ["text_encoder", "vae"]
quantize_config:
  quant_type: "float8_per_row"
  exclude_layers: ["embedder", "embed"]
  verbose: false
"""
FLAT_BENCH = """\
cache_type: DBCache
max_warmup_steps: 8
warmup_interval: 2
max_cached_steps: -1
max_continuous_cached_steps: 2
Fn_compute_blocks: 1
Bn_compute_blocks: 0
residual_diff_threshold: 0.12
enable_taylorseer: true
enable_encoder_taylorseer: true
taylorseer_cache_type: residual
taylorseer_order: 2
"""


def _write(tmp_path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_cache_dits_api_test_config(tmp_path):
    configs = cachedit.load_configs(_write(tmp_path, API_TEST_CONFIG))
    assert list(configs) == ["cache_config", "calibrator_config", "parallelism_config", "attention_backend", "quantize_config"]
    cache = configs["cache_config"]
    assert (cache.max_warmup_steps, cache.warmup_interval, cache.max_continuous_cached_steps, cache.Fn_compute_blocks,
            cache.residual_diff_threshold, cache.num_inference_steps) == (8, 2, 2, 1, 0.12, 28)
    assert cache.steps_computation_mask == cachedit.steps_mask(total_steps=28, mask_policy="fast")
    calibrator = configs["calibrator_config"]
    assert isinstance(calibrator, cachedit.TaylorSeerCalibratorConfig)
    assert (calibrator.taylorseer_order, calibrator.enable_encoder_calibrator) == (1, False)
    # cache-dit's deprecated parallel_kwargs are flattened into the fields, as cache-dit does
    assert configs["parallelism_config"] == cachedit.ParallelismConfig(
        ulysses_size=2, attention_backend="native", extra_parallel_modules=["text_encoder", "vae"])
    assert configs["attention_backend"] is None and configs["quantize_config"] is None
    tupled = cachedit.load_configs(_write(tmp_path, API_TEST_CONFIG), return_dict=False)
    assert tupled[0].strify() == cache.strify() and tupled[2] == configs["parallelism_config"]


def test_same_configs_as_cache_dit_reads_them(tmp_path):
    cache_dit = pytest.importorskip("cache_dit")
    logging.getLogger("CACHE_DIT").setLevel(logging.ERROR)
    for text in (API_TEST_CONFIG, FLAT_BENCH):
        path = _write(tmp_path, text)
        ours, theirs = cachedit.load_configs(path), cache_dit.load_configs(path)
        assert ours["cache_config"].strify() == theirs["cache_config"].strify()
        assert ours["calibrator_config"].strify() == theirs["calibrator_config"].strify()
        assert ours["calibrator_config"].as_dict() == theirs["calibrator_config"].as_dict()
    theirs_parallel = cache_dit.load_configs(_write(tmp_path, API_TEST_CONFIG))["parallelism_config"]
    ours_parallel = cachedit.load_parallelism_config(_write(tmp_path, API_TEST_CONFIG))
    assert isinstance(ours_parallel, cachedit.ParallelismConfig)
    for field in ("ulysses_size", "ring_size", "tp_size", "attention_backend", "extra_parallel_modules"):
        assert getattr(theirs_parallel, field) == getattr(ours_parallel, field), field


def test_example_files_sections_and_layouts(tmp_path):
    combined = cachedit.load_configs(_write(tmp_path, COMBINED))
    assert combined["cache_config"].strify() == "DBCache_F1B0_W8I2M0MC0_R0.12"
    parallel = combined["parallelism_config"]
    assert isinstance(parallel, cachedit.ParallelismConfig)
    assert (parallel.ulysses_size, parallel.attention_backend, parallel.extra_parallel_modules) == \
        ("auto", "native", ["text_encoder", "vae"])
    assert combined["quantize_config"] == {"quant_type": "float8_per_row", "exclude_layers": ["embedder", "embed"],
                                           "verbose": False}
    parallel_only = _write(tmp_path, "parallelism_config:\n  ulysses_size: auto\n  tp: 2\n")
    assert cachedit.load_cache_config(parallel_only) == (None, None)
    assert cachedit.load_parallelism_config(parallel_only) == cachedit.ParallelismConfig(ulysses_size="auto", tp_size=2)
    assert cachedit.load_parallelism_config(parallel_only, check_only=True) is True
    attention_only = cachedit.load_configs(_write(tmp_path, "attention_backend: flash\n"))
    assert attention_only == {"cache_config": None, "calibrator_config": None, "parallelism_config": None,
                              "attention_backend": "flash", "quantize_config": None}
    flat = cachedit.load_options(_write(tmp_path, FLAT_BENCH))
    assert list(flat) == ["cache_config", "calibrator_config"]
    assert flat["calibrator_config"].strify() == "T1O2" and flat["calibrator_config"].enable_encoder_calibrator
    assert cachedit.load_options(_write(tmp_path, COMBINED))["parallelism_config"].ulysses_size == "auto"
    partial, _ = cachedit.load_cache_config({"residual_diff_threshold": 0.2}, reset=True)
    assert partial.residual_diff_threshold == 0.2 and partial.Fn_compute_blocks is None


def test_enable_cache_with_loaded_configs(tmp_path, caplog):
    model = TinyDiT("Pattern_3")
    configs = cachedit.load_configs(_write(tmp_path, COMBINED))
    adapter = cachedit.BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern=cachedit.ForwardPattern.Pattern_3)
    # the file asks for parallel text encoders/VAE: refused by name, never a silent single-process run
    with pytest.raises(ValueError, match=r"^parallelism_config.extra_parallel_modules=\['text_encoder', 'vae'\] is not supported"):
        cachedit.enable_cache(adapter, **configs)
    configs["parallelism_config"].extra_parallel_modules = []
    with pytest.raises(ValueError, match="^parallelism_config needs torch.distributed: launch one process per device"):
        cachedit.enable_cache(adapter, **configs)  # one process: no world to shard over
    configs.pop("parallelism_config")
    with caplog.at_level("WARNING", logger="cachedit"):
        cachedit.enable_cache(adapter, **configs)
    assert "ignoring cache-dit arguments ['quantize_config']" in caplog.text
    sample(model, "Pattern_3", 12)
    assert cachedit.strify(model).startswith("DBCache_F1B0_W8I2M0MC0_R0.12_T1O1")
    cachedit.refresh_context(model, enable_taylorseer=True, taylorseer_order=2, residual_diff_threshold=0.3)
    options = cachedit.get_manager().entry(model).engine.options
    assert (options.calibrator_config.taylorseer_order, options.cache_config.residual_diff_threshold,
            options.cache_config.max_warmup_steps) == (2, 0.3, 8)
    cachedit.disable_cache(model)


@pytest.mark.parametrize("text, error, match", [
    ("cache_config:\n  Fn_compute_blocks: 1\n  Fn_blocks: 2\n", ValueError,
     r"unknown cache_config key 'Fn_blocks'; allowed: cache_type, Fn_compute_blocks"),
    ("cache_config:\n  Fn_compute_blocks: 1\nextra: 1\n", ValueError,
     r"unknown top-level key 'extra' in the config; allowed: cache_config, parallelism_config, attention_backend"),
    ("Fn_compute_blocks: 1\nfoo: 2\n", ValueError, r"unknown cache_config key 'foo'"),
    ("parallelism_config:\n  ulysses_sz: 2\n", ValueError, r"unknown parallelism_config key 'ulysses_sz'; allowed: backend"),
    ("parallelism_config:\n  ulysses: 2\n  ulysses_size: 4\n", ValueError,
     r"parallelism_config sets ulysses=2 and ulysses_size=4; allowed: one of them"),
    ("cache_config:\n  enable_foca: true\n", ValueError,
     r"key 'enable_foca' is not supported \(CacheDit runs the TaylorSeer calibrator only\); allowed calibrator keys"),
    ("cache_type: LayerCache\nFn_compute_blocks: 8\n", ValueError,
     r"cache_type='LayerCache' is not supported; allowed: 'DBCache', 'DBPrune'"),
    ("cache_config:\n  steps_computation_mask: fast\n", ValueError,
     r"steps_computation_mask='fast' names a steps_mask policy and needs num_inference_steps"),
    ("cache_config:\n  Fn_compute_blocks: -1\n", ValueError, r"Fn_compute_blocks=-1 is invalid; allowed: an integer"),
    ("- 1\n- 2\n", ValueError, r"holds a list; allowed: a mapping of cache_config"),
])
def test_bad_files_name_the_key(tmp_path, text, error, match):
    with pytest.raises(error, match=match):
        cachedit.load_configs(_write(tmp_path, text))


def test_bad_sources():
    with pytest.raises(FileNotFoundError, match=r"path_or_dict='/no/such/file.yaml': configuration file not found"):
        cachedit.load_configs("/no/such/file.yaml")
    with pytest.raises(TypeError, match=r"path_or_dict=3 is invalid; allowed: a YAML file path or a dict"):
        cachedit.load_cache_config(3)
    with pytest.raises(ValueError, match=r"refresh_context argument; allowed: cache_config, calibrator_config"):
        model = TinyDiT("Pattern_3")
        cachedit.enable_cache(model, blocks=["blocks"])
        try:
            cachedit.refresh_context(model, Fn_blocks=1)
        finally:
            cachedit.disable_cache(model)
