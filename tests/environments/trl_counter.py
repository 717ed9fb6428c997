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
