"""End-to-end planners: torch models, their losses, training (``rap train``) and the agent that
lets a checkpoint drive in every evaluator.

Only ``rap/cli.py`` imports this package from ``rap``; it reads datasets through ``rap.dataset``
and answers the evaluators' agent protocol (``rap.eval.agent``).
"""
