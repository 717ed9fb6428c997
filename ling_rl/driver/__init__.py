"""The driver process: the training loop and its generation strategies, the session that holds the
roles, batching, checkpoints, interrupts and in-run evaluation. Roles meet here, not in each other's
packages."""
