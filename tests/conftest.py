"""Test setup: 8 emulated CPU devices and a persistent compilation cache."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

_CACHE = os.environ.get("JAXMIX_TEST_CACHE", os.path.expanduser("~/.cache/jaxmix/jax-test-cache"))
os.environ.setdefault("JAXMIX_COMPILATION_CACHE", _CACHE)  # what `jaxmix train` / `eval` use in tests
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
CIFAR_DIR = os.path.join(SHARED, "data", "cifar10")
