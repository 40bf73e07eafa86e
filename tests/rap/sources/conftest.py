"""Fixtures for the source readers' tests: running a load in a memory-limited subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]

# Run before the test's own code in the child: it reports the outcome of one call as a JSON line,
# so a MemoryError, RecursionError or any other exception shows up as data, and a crash or a kill
# (segfault, SIGKILL, CPU limit) as a missing line and the return code.
_PRELUDE = """
import json, sys

def report(fn):
    try:
        fn()
        out = {"ok": True}
    except BaseException as e:
        out = {
            "ok": False,
            "type": type(e).__name__,
            "types": [c.__name__ for c in type(e).__mro__],
            "message": str(e)[:4000],
            "field": getattr(e, "field", None),
        }
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    out["peak_rss_mb"] = hwm / 1024
    print("RESULT " + json.dumps(out), flush=True)
"""

MEMORY_LIMIT = 1_500_000_000  # [bytes] address space of the child (RLIMIT_AS)
CPU_LIMIT_S = 30  # RLIMIT_CPU of the child: a runaway loop is killed, not waited for


def _limits(memory: int, cpu_s: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))

    return apply


@pytest.fixture()
def run_limited() -> Callable[..., dict]:
    """``run(code, *args)`` runs ``code`` in a fresh interpreter with at most 1.5 GB of address
    space and 30 s of CPU; ``code`` calls ``report(lambda: ...)`` once (``sys.argv[1:]`` are
    ``args``). Returns the report: ``ok``, else ``type`` / ``types`` (the exception's MRO names)
    / ``message`` / ``field``; and ``peak_rss_mb``. Fails the test when the child crashed or was
    killed (no report)."""

    def run(code: str, *args: str, memory: int = MEMORY_LIMIT, timeout_s: float = 60.0) -> dict:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, "-c", _PRELUDE + code, *map(str, args)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            preexec_fn=_limits(memory, CPU_LIMIT_S),
            check=False,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            pytest.fail(
                f"child died without a report (return code {proc.returncode}); stderr tail:\n"
                f"{proc.stderr[-2000:]}"
            )
        return json.loads(lines[-1][len("RESULT ") :])

    return run
