"""Recipe names -> tools and environments (ling_rl/environments/loading.py): built-ins, files and
dotted paths resolve to TRL's schemas; every unusable entry is one line naming its recipe key;
build_tools gives the callables an episode's process runs."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from ling_rl.environments.config import EnvironmentConfig
from ling_rl.environments.loading import EnvironmentSetupError, build_tools, resolve_environment

TOOLS_FILE = '''
from __future__ import annotations


def add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


async def shout(text: str) -> str:
    """Upper-cases a text.

    Args:
        text: The text.
    """
    return text.upper()


def no_docstring(a: int) -> int:
    return a


def no_hint(a) -> int:
    """Returns a.

    Args:
        a: A value.
    """
    return a


def undocumented_arg(a: int, b: int) -> int:
    """Returns a.

    Args:
        a: A value.
    """
    return a


class NotATool:
    pass


NUMBER = 3
'''

# An environment written to TRL's documented `environment_factory` contract (TRL 1.16 docs), unchanged.
ENV_FILE = '''
class Counter:
    def __init__(self):
        self.count = 0

    def reset(self, **kwargs) -> str | None:
        self.count = int(kwargs.get("start", 0))
        return f"The counter starts at {self.count}."

    def increment(self, step: int) -> int:
        """Increments the counter.

        Args:
            step: How much to add.

        Returns:
            The new value of the counter.
        """
        self.count += step
        return self.count

    def _helper(self) -> None:
        pass

    @property
    def doubled(self) -> int:
        raise RuntimeError("properties are not evaluated")

    def get_reward(self) -> float:
        return float(self.count == 10)


class NoReset:
    def look(self) -> str:
        """Looks around."""
        return "a room"


class NeedsArgs:
    def __init__(self, size):
        self.size = size

    def reset(self, **kwargs):
        return None


class BadReward:
    get_reward = 3

    def reset(self, **kwargs):
        return None

    def look(self) -> str:
        """Looks around."""
        return "a room"


class Hangs:
    def __init__(self):
        import time
        time.sleep(30)


class OnlyReset:
    def reset(self, **kwargs):
        return None


class Clash:
    def reset(self, **kwargs):
        return None

    def add(self, a: int, b: int) -> int:
        """Adds.

        Args:
            a: A.
            b: B.
        """
        return a + b
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tools.py").write_text(TOOLS_FILE)
    (tmp_path / "envs.py").write_text(textwrap.dedent(ENV_FILE))
    return tmp_path


def _resolve(workdir: Path, tools: list[str] | None = None, factory: str | None = None, **kw: object):
    return resolve_environment(EnvironmentConfig(tools=tools or [], factory=factory, **kw), str(workdir))


def test_builtin_file_and_dotted_tools(workdir: Path) -> None:
    env = _resolve(workdir, ["calculator", "tools.py:add", "tools.py:shout", "ling_rl.environments.builtin:python"])
    assert env.tool_names == ("calculator", "add", "shout", "python")
    assert env.schemas[1] == {"type": "function", "function": {
        "name": "add", "description": "Adds two integers.",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "description": "The first integer."},
            "b": {"type": "integer", "description": "The second integer."}}, "required": ["a", "b"]},
        "return": {"type": "integer"}}}
    assert env.factory_ref is None and env.env_name is None and not env.has_reward
    assert env.workdir == str(workdir)
    instance, tools = build_tools(env)
    assert instance is None and list(tools) == list(env.tool_names)
    assert tools["calculator"]("6*7") == "42" and tools["add"](a=2, b=3) == 5
    assert asyncio.run(tools["shout"](text="hi")) == "HI"


def test_trl_environment_class_unchanged(workdir: Path) -> None:
    env = _resolve(workdir, ["tools.py:add"], factory="envs.py:Counter")
    assert env.tool_names == ("add", "increment")  # not reset, get_reward, _helper or the property
    assert env.env_name == "Counter" and env.has_reward
    assert env.schemas[1]["function"]["parameters"]["properties"] == {"step": {"type": "integer", "description": "How much to add."}}
    instance, tools = build_tools(env)
    assert instance.reset(start=7) == "The counter starts at 7."
    assert tools["increment"](step=3) == 10 and instance.get_reward() == 1.0  # bound to this instance


@pytest.mark.parametrize(("tools", "factory", "error"), [
    (["tools.py:nope"], None, r"^environment.tools\[0\] 'tools.py:nope': _ling_rl_file_tools_\w+ has no attribute 'nope'; callables there: "),
    (["missing.py:add"], None, r"^environment.tools\[0\] 'missing.py:add': file '.*missing.py' not found$"),
    (["no_such_pkg.mod:f"], None, r"^environment.tools\[0\] 'no_such_pkg.mod:f': no module 'no_such_pkg.mod'$"),
    (["calculater"], None, r"^environment.tools\[0\] 'calculater': unknown built-in tool; built-in: calculator, python; or give a file"),
    (["calculator", "tools.py:NUMBER"], None, r"^environment.tools\[1\] 'tools.py:NUMBER': is a int, not callable$"),
    (["tools.py:NotATool"], None, r"^environment.tools\[0\] 'tools.py:NotATool': is a class; a tool is a function"),
    (["tools.py:no_docstring"], None, r"^environment.tools\[0\] 'tools.py:no_docstring': no JSON schema \(.*no docstring"),
    (["tools.py:no_hint"], None, r"^environment.tools\[0\] 'tools.py:no_hint': no JSON schema \(.*missing a type hint"),
    (["tools.py:undocumented_arg"], None, r"^environment.tools\[0\] 'tools.py:undocumented_arg': no JSON schema \(.*'b'"),
    (["tools.py:add", "calculator", "tools.py:add"], None, r"^environment.tools\[2\] 'tools.py:add': tool name 'add' is already environment.tools\[0\] 'tools.py:add'"),
    (["tools.py:add"], "envs.py:Clash", r"^environment.factory 'envs.py:Clash': method Clash.add: tool name 'add' is already environment.tools\[0\]"),
    ([], "envs.py:NoReset", r"^environment.factory 'envs.py:NoReset': its instance \(NoReset\) has no `reset` method"),
    ([], "envs.py:NeedsArgs", r"^environment.factory 'envs.py:NeedsArgs': calling it with no arguments failed: TypeError: .*size"),
    ([], "envs.py:BadReward", r"^environment.factory 'envs.py:BadReward': BadReward.get_reward is a int, not callable"),
    ([], "envs.py:OnlyReset", r"^environment.factory 'envs.py:OnlyReset': OnlyReset has no public methods"),
    ([], "envs.py:NUMBER", r"^environment.factory 'envs.py:NUMBER': .*has no attribute 'NUMBER'"),
    ([], "Counter", r"^environment.factory 'Counter': an environment factory is a class or callable; or give a file"),
])
def test_unusable_entries_are_one_line_naming_the_key(workdir: Path, tools: list[str], factory: str | None, error: str) -> None:
    with pytest.raises(EnvironmentSetupError, match=error) as info:
        _resolve(workdir, tools, factory)
    assert "\n" not in str(info.value)


def test_a_factory_that_hangs_is_bounded(workdir: Path) -> None:
    with pytest.raises(EnvironmentSetupError, match=r"did not return within environment.timeout_s=0.5 s"):
        _resolve(workdir, factory="envs.py:Hangs", timeout_s=0.5)


def test_relative_files_resolve_in_the_workdir_not_the_current_directory(workdir: Path, tmp_path_factory, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    env = _resolve(workdir, ["tools.py:add"])
    assert build_tools(env)[1]["add"](a=1, b=1) == 2


def test_the_environment_reward_plugin_reads_the_column_the_episode_loop_writes() -> None:
    """Reward workers pass dataset columns by parameter name: the plugin's parameter must be the column."""
    import inspect

    from ling_rl.environments.spec import ENV_REWARD_COLUMN
    from rewards.environment import environment_reward

    assert ENV_REWARD_COLUMN in inspect.signature(environment_reward).parameters
    assert environment_reward(completions=["a", "b"], **{ENV_REWARD_COLUMN: [0.5, None]}) == [0.5, None]
