"""Ray start-up shared by the commands that can run on a cluster (``rap generate --executor ray``,
``rap eval closed-loop --executor ray``)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

__all__ = ["ray_session"]

RAY_MISSING = "the ray executor needs Ray: pip install 'rap[ray]' (or pip install ray)"


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
