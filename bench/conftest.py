"""pytest-benchmark set-up for the suites here: the report header names torch, the thread
count and the allocator settings (``harness.environment_lines``), which every record's
extra_info repeats, because on these VMs first-touch page faults of fresh allocations can
dominate (``make bench`` sets glibc's mmap/trim thresholds so freed buffers are reused)."""

from __future__ import annotations

import harness


def pytest_report_header(config):
    return harness.environment_lines()
