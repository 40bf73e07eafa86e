"""Worker-process helpers shared by the commands that run work in parallel (``rap generate``,
``rap eval closed-loop``): Ray start-up for ``--executor ray``, and tying local worker
processes to the run that started them."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

__all__ = ["die_with_parent", "ray_session"]

RAY_MISSING = "the ray executor needs Ray: pip install 'rap[ray]' (or pip install ray)"


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer (Linux): the calling worker process is killed when the process that
    started it (``parent_pid``) dies, even by ``kill -9``, so a killed run leaves no workers
    running on (writing into a folder a resumed run now holds, or using the CPU for nobody)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        return
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)


@contextlib.contextmanager
def ray_session(workers: int, address: Optional[str] = None, error: type[Exception] = ValueError) -> Iterator:
    """The ``ray`` module, initialised for the ``with`` block unless it already was.

    ``ray.init()`` joins the cluster at ``address``, else the one named by ``RAY_ADDRESS`` when
    set, else starts a local instance with ``workers`` CPUs; a session started here is shut down
    at the end of the block (one started by the caller is left alone).

    Raises:
        error: Ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError as exc:
        raise error(RAY_MISSING) from exc
    started_here = not ray.is_initialized()
    if started_here:
        joins = address or os.environ.get("RAY_ADDRESS")
        # num_cpus may only be given to a new local instance, not when joining a cluster
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, num_cpus=None if joins else max(1, workers))
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()
