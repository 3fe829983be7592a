"""Benchmark arithmetic: percentiles per variant, ratios with their spread, paired differences, the machine.

Benchmarks here run their variants interleaved: turn after turn, each variant gets a small block of calls,
so load from elsewhere on the machine hits every variant alike. A ratio is then reported as the ratio of
the two variants' medians over all calls, with the spread of the per-turn ratios (each from blocks measured
minutes apart at most, side by side).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np


def percentiles(seconds: list[float]) -> dict:
    """p10/p50/p90/mean in milliseconds and the number of calls, from seconds per call."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if not len(a):
        raise ValueError("no timings to summarise")
    return {"p50_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p10_ms": float(np.percentile(a, 10)), "mean_ms": float(a.mean()), "calls": int(len(a))}


def ratio_with_spread(numerator: list[list[float]], denominator: list[list[float]]) -> dict:
    """Median(numerator) / median(denominator) over all calls, and p10/p90 of the per-turn ratios.

    `numerator[t]` and `denominator[t]` are the seconds per call of the two variants' blocks in turn t.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need the same number of turns on both sides, got {len(numerator)} and {len(denominator)}")
    per_turn = [np.median(a) / np.median(b) for a, b in zip(numerator, denominator)]
    overall = np.median(np.concatenate(numerator)) / np.median(np.concatenate(denominator))
    return {"value": round(float(overall), 4), "p10": round(float(np.percentile(per_turn, 10)), 4),
            "p90": round(float(np.percentile(per_turn, 90)), 4), "turns": len(per_turn)}


def paired_difference_ms(first: list[float], second: list[float]) -> dict:
    """Median and p10/p90 of second[i] - first[i] in ms: two things timed back to back, call by call."""
    if len(first) != len(second) or not first:
        raise ValueError(f"need pairs, got {len(first)} and {len(second)} timings")
    diff = (np.asarray(second) - np.asarray(first)) * 1e3
    return {"value": round(float(np.median(diff)), 3), "p10": round(float(np.percentile(diff, 10)), 3),
            "p90": round(float(np.percentile(diff, 90)), 3), "pairs": len(diff)}


def load_average() -> float:
    """1-minute load average: other work on the machine skews every timing, so each report records it."""
    return round(os.getloadavg()[0], 2)


def machine_info() -> dict:
    """CPU, core count and library versions, for the report."""
    import faiss
    import ray

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
