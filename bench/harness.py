"""What the benches share: where the repository is, how a run describes the machine it ran on, and how
its timings are summarised, so that the tables of BENCHMARKS.md read alike."""

import os
import platform
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def percentile(values, q: float, digits: int = 3) -> float:
    """The q-th percentile (0-100) of `values`, rounded to what a table shows."""
    return round(float(np.percentile(values, q)), digits)


def percentiles(values, qs=(50, 99), digits: int = 3) -> dict[str, float]:
    """{"p50": …, "p99": …} of `values`."""
    return {f"p{q}": percentile(values, q, digits) for q in qs}


def machine(python: bool = False) -> str:
    """"x86_64, 2 cores" (and the Python version): the line a figure is measured on."""
    described = f"{platform.machine()}, {os.cpu_count()} cores"
    return f"{described}, Python {platform.python_version()}" if python else described


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: on a shared machine, what else was running."""
    return [round(value, 2) for value in os.getloadavg()]
