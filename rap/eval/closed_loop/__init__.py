"""Closed-loop evaluation, Bench2Drive-style, on synthetic towns or real-log-seeded routes on a CPU
(``rap eval closed-loop``).

* :mod:`~rap.eval.closed_loop.routes`: the synthetic route suites (``bench:base``, ``bench:dev10``,
  ``synthetic:N``), one scenario event per route, grouped by Bench2Drive's abilities.
* :mod:`~rap.eval.closed_loop.world`: the fixed-step world (IDM traffic, timed lights, event
  actors, the ego executed by the tracker on the bicycle model from a moving start) and its
  Scene snapshots; :mod:`~rap.eval.closed_loop.pedestrians`: its pedestrians.
* :mod:`~rap.eval.closed_loop.log_world`: real-log-seeded routes (``--routes womd:PATH``): the
  world of a logged scenario (its map and lights, the ego from its logged state along its
  logged lanes, the other agents replayed or driven by IDM: ``closed_loop.traffic=log|idm``).
* :mod:`~rap.eval.closed_loop.infractions`: per-tick infraction detection and route progress.
* :mod:`~rap.eval.closed_loop.runner`: the agent loop per route, the suite (workers, resume).
* :mod:`~rap.eval.closed_loop.outputs`: ``results.json``, the summary JSON and Markdown.
* :mod:`~rap.eval.closed_loop.media`: per route, the recorded states, the BEV animation and the
  camera strip; :mod:`~rap.eval.closed_loop.html_report`: ``index.html``.
* :mod:`~rap.eval.closed_loop.config`: ``ClosedLoopConfig`` (the eval config plus ``closed_loop``).

Judging is :mod:`rap.eval.driving_score`'s (pure functions).
"""
