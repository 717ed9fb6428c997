"""Agentic RL: tools and environments the policy acts in over several turns (docs/environments.md).

    config.py      the recipe's `environment:` section
    spec.py        the resolved environment (plain data) and what a tool call returns
    loading.py     recipe names -> tool functions, environment class, JSON schemas (checked up front)
    builtin.py     built-in tools (`python` in the code sandbox, `calculator`)
    parsers.py     tool-call parsers by chat-template convention (a registry)
    rendering.py   prompts with tool schemas, tool results as token ids
    process.py     one episode's tools or environment instance in a process of its own (timeouts, crashes)

The episode loop that uses them is the rollout side's: ling_rl/rollout/episodes.py.
"""
