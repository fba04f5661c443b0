"""Benchmark set-up: thread count and allocator settings go into the report header and
into every record's extra_info, because on these VMs first-touch page faults of fresh
allocations can dominate (``make bench`` sets glibc's mmap/trim thresholds so freed
buffers are reused; see the Makefile)."""

from __future__ import annotations

import os

import torch

ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD", "PYTORCH_CUDA_ALLOC_CONF")


def allocator_settings() -> dict:
    return {k: os.environ.get(k, "<unset>") for k in ALLOCATOR_ENV}


def pytest_report_header(config):
    return [
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, cuda={torch.cuda.is_available()}",
        "allocator: " + ", ".join(f"{k}={v}" for k, v in allocator_settings().items()),
    ]
