"""The `environment:` section: tools and environments for multi-turn (agentic) episodes."""

from __future__ import annotations

from pydantic import Field, model_validator

from ling_rl.schema import Section


class EnvironmentConfig(Section):
    """Tools the policy may call, or an environment class whose methods are its tools; the
    episode loop (ling_rl/rollout/episodes.py) generates, runs the calls and feeds the results back
    until the model answers without a call or a limit is reached. Absent: single-turn RL."""

    tools: list[str] = Field(default_factory=list)
    """Tool functions, as TRL's `tools=[...]`: a built-in name (`calculator`, `python`), a file
    `path/to/file.py:func` or a dotted path `pkg.module:func`. Each needs type hints and a
    Google-style docstring (its JSON schema is made from them, as TRL does); `async def` allowed."""

    factory: str | None = None
    """An environment class or callable, as TRL's `environment_factory`, by the same kinds of name:
    one instance per episode; `reset(**row)` (the dataset row's columns and `prompt`) returns None
    or a string appended to the last user message; every public method (not `reset`, not
    `get_reward`, not starting with `_`) is a tool; an optional `get_reward() -> float` is one more
    reward source (`reward_weight`), read when the episode ends."""

    tool_parser: str = "auto"
    """How tool calls are found in the model's text (`ling_rl.environments.parsers.TOOL_PARSERS`);
    `auto`: from the chat template's convention (`<tool_call>` -> `hermes`)."""

    max_turns: int = Field(default=4, ge=1)
    """Most model turns per episode; an episode still calling tools after this many is cut (counted)."""

    max_episode_tokens: int | None = Field(default=None, ge=1)
    """Most tokens after the prompt (the model's and the tool results') per episode; unset: the
    step's response budget (`rollout.max_response_tokens`, or the curriculum stage's). A tool
    result that would pass it ends the episode before it is appended (counted as cut)."""

    max_turn_tokens: int | None = Field(default=None, ge=1)
    """Most tokens of one model turn; a turn that reaches it without ending is parsed as if it had
    ended (its tool calls run) and counted (`agent/turns_cut`). Unset: a turn may use what is left
    of the episode's budget."""

    tool_timeout_s: float = Field(default=30.0, gt=0)
    """One tool call's wall-clock limit: past it the episode's tool process is killed, the model
    gets an error result, and it is counted (`agent/tool_timeout`). An environment's state dies
    with its process, so its episode then ends as a failure."""

    timeout_s: float = Field(default=60.0, gt=0)
    """Limit for starting an episode's process and for `reset` and `get_reward`."""

    max_tool_output_chars: int = Field(default=2000, ge=1)
    """A tool result longer than this is cut to it (with a marker) before it is tokenized."""

    reward_weight: float = 1.0
    """Weight of the environment's `get_reward` in the total reward (TRL: 1)."""

    max_failed_fraction: float = Field(default=0.5, gt=0, le=1)
    """A step in which more than this fraction of the episodes failed (their environment process
    crashed or could not start) counts as a failed step."""

    max_failed_steps: int = Field(default=3, ge=1)
    """Failed steps in a row that stop the run with one line naming the environment (as
    `reward_signal.max_failed_steps` does for rewards)."""

    @model_validator(mode="after")
    def _has_tools(self) -> EnvironmentConfig:
        if not self.tools and self.factory is None:
            raise ValueError("give `tools` (a list of tool functions) or `factory` (an environment class)")
        return self
