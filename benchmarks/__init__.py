"""Benchmarks of CacheDit against cache-dit and diffusers' built-in caches (never part of the test suite).

    python -m benchmarks.run            # full run: bundled model at 28 and 50 steps + CPU scaling (~15 min)
    python -m benchmarks.run --quick    # smoke run (< 2 min)
    python -m benchmarks.gpu_scaling    # FLUX-width scaling on a GPU (see its docstring)
"""
