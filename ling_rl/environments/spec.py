"""What the episode loop and an episode's tool process share: the resolved environment (plain,
picklable data: names, not objects) and the result of one tool call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ToolStatus = Literal["ok", "error", "unknown_tool", "bad_call", "timeout", "crashed"]
"""`ok`: the tool returned; `error`: it raised; `unknown_tool`: no tool of that name; `bad_call`:
the call could not be parsed or its arguments do not fit; `timeout`: killed past
`environment.tool_timeout_s`; `crashed`: the tool process died or broke the protocol."""

ENV_REWARD_COLUMN = "__environment_reward__"
"""The column an episode's `get_reward()` travels in to the reward workers (the `environment_reward`
plugin, rewards/environment.py, takes it by this name): set on the episode's own copy of its sample,
never from the dataset."""


class EnvironmentSetupError(ValueError):
    """An `environment:` section, tool, environment class or chat template that cannot be used; one
    line naming the recipe key (e.g. `environment.tools[1] 'tools.py:add': ...`) and what is wrong."""


@dataclass(frozen=True)
class ResolvedEnvironment:
    """The `environment:` section resolved and checked (`loading.resolve_environment`): what an
    episode's process loads by name, and the schemas the prompt shows."""

    tool_refs: tuple[str, ...]
    """The recipe's tool names (`environment.tools`), loaded again in each episode's process."""
    factory_ref: str | None
    """`environment.factory`, or None."""
    tool_names: tuple[str, ...]
    """Every tool the model may call: the functions' names, then the environment's methods."""
    schemas: tuple[dict[str, Any], ...]
    """The JSON schema of each tool (`{"type": "function", "function": {...}}`), in `tool_names` order."""
    env_name: str | None = None
    """The environment class's name (the reward source's name in breakdowns and metrics), or None."""
    has_reward: bool = False
    """The environment defines `get_reward`."""
    workdir: str = "."
    """The working directory relative file names were given in (the process resolves them there)."""


@dataclass
class ToolResult:
    """One tool call's outcome, as the model will read it (`content`) and as metrics count it."""

    name: str
    content: str
    status: ToolStatus
    seconds: float = 0.0
    truncated: bool = False
    """The tool's text was longer than `environment.max_tool_output_chars` and was cut."""
    extra: dict[str, Any] = field(default_factory=dict)
