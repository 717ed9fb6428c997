"""The learner role: N `LearnerWorker` ranks as Ray actors, called together.

Every call is gathered with a bounded wait (`ling_rl.cluster.waits`): the first rank that raises
or dies fails the call with its rank and the phase, and so does a call not finished
`call_timeout_s` after it was sent (one deadline per call, not per rank); the whole group is then
torn down (the other ranks would otherwise block in a collective).
"""

from __future__ import annotations

from typing import Any

import ray

from ling_rl.cluster import waits
from ling_rl.cluster.config import ClusterConfig
from ling_rl.cluster.placement import actor_options
from ling_rl.learner.sections import LearnerSections
from ling_rl.learner.worker import LearnerWorker
from ling_rl.types import TrainBatch


class LearnerError(RuntimeError):
    """A learner rank failed or did not answer in time."""


class LearnerGroup:
    def __init__(self, sections: LearnerSections, model_dir: str, cluster: ClusterConfig,
                 call_timeout_s: float | None = None, wait: bool = True) -> None:
        """Start the ranks; with `wait` (default) also join them and build the model (`wait_started`).
        `call_timeout_s`: the deadline of each call (start and setup included); default
        `learner.call_timeout_s`."""
        self.timeout = sections.learner.call_timeout_s if call_timeout_s is None else call_timeout_s
        world = sections.learner.num_ranks
        threads = cluster.learner.actor_threads
        actor = ray.remote(LearnerWorker)
        env = {"OMP_NUM_THREADS": str(threads)}
        self.workers = [actor.options(**actor_options(cluster.learner, f"learner-{rank}", env)).remote(
                            rank, world, sections, model_dir, threads) for rank in range(world)]
        self._address_ref = self.workers[0].rendezvous_address.remote()
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Join the ranks' process group and build the model on each (the rendezvous address
        comes from rank 0 once its actor runs); a failed or late rank tears the group down and
        raises `LearnerError` naming it."""
        address = self._gather([self._address_ref], "start")[0]
        self._gather([w.setup.remote(address) for w in self.workers], "setup")

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        ref = ray.put(batch)
        return self._gather([w.train_step.remote(ref) for w in self.workers], "train_step")[0]

    def sft_step(self, batch: TrainBatch, lr: float) -> dict[str, float]:
        ref = ray.put(batch)
        return self._gather([w.sft_step.remote(ref, lr) for w in self.workers], "sft_step")[0]

    def submit(self, method: str, *args: Any) -> list[Any]:
        """Start `method(*args)` on every rank without waiting (weight sync: the learner's
        broadcast must run while the engines receive); `wait` collects it."""
        return [getattr(w, method).remote(*args) for w in self.workers]

    def wait(self, refs: list[Any], what: str) -> list[Any]:
        """Per rank, the results of `submit`'s calls (bounded wait, as every call)."""
        return self._gather(refs, what)

    def export_hf(self, out_dir: str, tokenizer_dir: str) -> None:
        self._gather([w.export_hf.remote(out_dir, tokenizer_dir) for w in self.workers], "HF export")

    def save_checkpoint(self, ckpt_dir: str) -> None:
        self._gather([w.save_checkpoint.remote(ckpt_dir) for w in self.workers], "checkpoint save")

    def load_checkpoint(self, ckpt_dir: str) -> None:
        self._gather([w.load_checkpoint.remote(ckpt_dir) for w in self.workers], "checkpoint load")

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []

    def _gather(self, refs: list[Any], what: str) -> list[Any]:
        """Per rank, its result, by `waits.gather` within `call_timeout_s` of now; a failure shuts
        the group down before `LearnerError` propagates."""
        try:
            return waits.gather(refs, [f"learner rank {rank}" for rank in range(len(refs))], what, self.timeout,
                                LearnerError)
        except LearnerError:
            self.shutdown()
            raise
