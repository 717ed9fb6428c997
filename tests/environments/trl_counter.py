"""An environment written to TRL's documented `environment_factory` contract (TRL 1.16's GRPOTrainer
docs and examples): a class with `reset(**kwargs)`, public methods with type hints and Google-style
docstrings as tools, and `get_reward()`. Used unchanged by ling-rl's tests."""


class CounterEnv:
    def __init__(self):
        self._counter = 0

    def reset(self, **kwargs) -> str | None:
        self._counter = 0
        return None

    def increment(self, a: int) -> int:
        """
        Increment the counter by a specified value

        Args:
            a: The value to increment by

        Returns:
            The incremented integer.
        """
        self._counter += a
        return self._counter

    def get_reward(self) -> float:
        return float(self._counter)


def tool_messages(completions, **kwargs):
    """A TRL reward function over conversational completions: the number of tool results the
    model read (TRL passes an agentic completion as its list of messages)."""
    return [float(sum(message["role"] == "tool" for message in completion)) for completion in completions]


class BrokenEnv:
    """An environment whose every reset fails (e.g. a service it needs is down)."""

    def reset(self, **kwargs) -> None:
        raise ConnectionError("the environment's backend is down")

    def look(self) -> str:
        """
        Look around.
        """
        return "nothing"


def env_reward(completions, environments, **kwargs):
    """TRL's own pattern for an environment that owns its reward (TRL's OpenEnv examples)."""
    return [environment.get_reward() for environment in environments]
