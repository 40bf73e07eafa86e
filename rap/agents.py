"""Agent specs as the commands accept them: a built-in agent, an agent file or module, or a
checkpoint of ``rap train`` (``*.pt``). The commands layer (``rap/cli.py``, ``rap/demo.py``,
``rap/experiments/``) is the only part of ``rap`` that imports ``planners``; this module is how it
turns a checkpoint path into an agent."""

from __future__ import annotations

from collections.abc import Callable

from rap.eval.agent import Agent

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def is_checkpoint(spec: str) -> bool:
    """Whether an agent spec names a checkpoint file (by its suffix)."""
    return str(spec).endswith(CHECKPOINT_SUFFIXES)


def load_any_agent(spec: str, builtin: Callable[[str], Agent] | None = None) -> Agent:
    """A built-in agent, an agent file/module (``builtin``'s, default
    :func:`rap.eval.agent.load_agent`), or a checkpoint of rap train (``*.pt``).

    Raises:
        ValueError: AgentLoadError / CheckpointError, one line naming the file or module.
    """
    from rap.eval.agent import load_agent

    if is_checkpoint(spec):
        from planners.agent import CheckpointAgent

        return CheckpointAgent(spec)
    return (builtin or load_agent)(spec)


def load_closed_loop_agent(spec: str) -> Agent:
    """The closed-loop evaluator's agents (its own ``expert``), or a checkpoint of rap train
    (module level: the evaluator's spawned workers load the agent with it)."""
    from rap.eval.closed_loop.runner import load_agent_spec

    return load_any_agent(spec, load_agent_spec)
