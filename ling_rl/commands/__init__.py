"""The `ling-rl` commands: the CLI and what its subcommands run (eval, sweep, plan, preflight checks,
the recipe reference of the docs)."""
