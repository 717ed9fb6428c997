"""Where a step of the CPU RL run goes: each phase split into compute and overhead, from outside
the library (issue 12, item 1).

Part 1 drives a live session (recipes/tiny_cpu.yaml, one learner rank) with the same calls as
`ling_rl.driver.loop.train` (score -> build_train_batch -> learner.train_step -> sync_weights), timing
each on the driver; the sync's own gather / transfer / load split comes from its metrics. On the
live Ray cluster it then times an empty actor call (the learner's `ping`), `ray.put` of the train
batch (serialization), and an actor call that receives the batch (put + transfer + unpickle).

Part 2 runs after the session closed (the box is quiet again), in this process, on the last
step's batch: a `LearnerWorker` with one rank (FSDP2-wrapped, gloo) runs `train_step` (what the
learner actor computes); the same weights in a plain, unwrapped `LingForCausalLM` run the forward
+ backward of the same micro-batch and an AdamW step (the compute without FSDP2); the weight
export to bucket files (FSDP2 gather + safetensors write) against a plain in-memory copy of the
same bytes; and one decode step of the model ([rows, 1] tokens, no KV cache: a lower bound on
the compute of one vLLM decode step).

    .venv/bin/python bench/step_profile.py [--preset tiny|small] [--steps 6] [--response-tokens 32]
        [--write-results] [extra recipe overrides ...]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The script's folder comes first on sys.path; the project's packages come from the repository root.
sys.path[0] = str(ROOT)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` calls (after one untimed warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def drive_session(recipe: Any, run_dir: Path, steps: int) -> tuple[dict[str, float], Any, Any]:
    """Part 1: start a session, run `steps` RL steps, time the phases and the Ray round trips.
    Returns the per-phase medians (first step excluded), the last train batch and the session."""
    import ray

    from ling_rl.driver import session as sessions
    from ling_rl.driver.batching import build_train_batch
    from ling_rl.driver.generation import score
    from ling_rl.tracking import PhaseTimer

    began = time.perf_counter()
    s = sessions.start(recipe, run_dir)
    startup = time.perf_counter() - began
    rows: list[dict[str, float]] = []
    batch = None
    try:
        for step in range(steps):
            timer = PhaseTimer()
            scored = score(s, timer, s.next_prompts(recipe.rollout.prompts_per_step, step), step)
            s.curriculum.update(step, scored)
            with timer.phase("batch"):
                batch, _ = build_train_batch(scored, recipe.algorithm, s.segmenter, s.pad_id)
            with timer.phase("learner"):
                learner = s.learner.train_step(batch)
            sync: dict[str, float] = {}
            if not learner["skipped"]:
                with timer.phase("sync"):
                    sync = s.sync_weights(step + 1)
            lengths = [len(x.rollout.response_ids) for x in scored]
            rows.append({**timer.as_metrics(), **sync, "decode_steps": float(max(lengths)),
                         "response_tokens": float(sum(lengths)), "rows": float(len(scored))})
        worker = s.learner.workers[0]

        @ray.remote(num_cpus=0)
        class Sink:
            def take(self, payload: Any) -> int:
                return 0

        sink = Sink.remote()
        ray.get(sink.take.remote(None))
        out = {k: statistics.median(r.get(k, 0.0) for r in rows[1:]) for k in rows[-1]}
        out["startup_s"] = startup
        out["ray/empty_call_s"] = median_time(lambda: ray.get(worker.ping.remote()), 20)
        out["ray/put_batch_s"] = median_time(lambda: ray.put(batch), 20)
        out["ray/call_with_batch_s"] = median_time(lambda: ray.get(sink.take.remote(batch)), 20)
        out["batch_mib"] = sum(t.numel() * t.element_size() for t in (
            batch.input_ids, batch.response_mask, batch.advantages, batch.unit_ids, batch.inf_logprobs)) / 2**20
        ray.kill(sink)
    finally:
        s.close()
    return out, batch, s


def in_process(recipe: Any, model_dir: Path, batch: Any, shm_dir: Path) -> dict[str, float]:
    """Part 2: the learner's and the sync's work in this process, with and without FSDP2."""
    import torch

    from ling_rl.learner.sections import LearnerSections
    from ling_rl.learner.worker import LearnerWorker
    from ling_rl.models.hf_io import inference_weights
    from ling_rl.models.ling_moe import LingForCausalLM

    threads = recipe.cluster.learner.actor_threads  # the learner actor's thread count
    worker = LearnerWorker(0, 1, LearnerSections.of(recipe), str(model_dir), threads)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    worker.setup(f"tcp://127.0.0.1:{port}")
    out: dict[str, float] = {"threads": float(threads)}
    out["learner/train_step_fsdp_s"] = median_time(lambda: worker.train_step(batch), 3)

    state = worker._full_state()
    plain = LingForCausalLM(worker.config)
    plain.load_state_dict(state)
    ids = batch.input_ids
    lengths = batch.response_mask.long().cumsum(1).argmax(1) + 1  # last response position + 1
    ids = ids[:, : int(lengths.max())]

    def forward_backward(model: torch.nn.Module) -> None:
        logp, _ = worker._token_logprobs(model, ids, entropy=True)
        (logp * batch.response_mask[:, : ids.shape[1]]).sum().backward()

    out["learner/fwd_bwd_fsdp_s"] = median_time(lambda: forward_backward(worker.model), 3)
    out["learner/fwd_bwd_plain_s"] = median_time(lambda: forward_backward(plain), 3)
    params = [p for p in plain.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, foreach=False)
    for p in params:
        p.grad = torch.zeros_like(p)

    def optimizer_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    out["learner/optimizer_plain_s"] = median_time(optimizer_step, 3)
    out["learner/optimizer_fsdp_s"] = median_time(lambda: worker._optimizer_step(worker.optimizer), 3)
    with torch.no_grad():
        out["rollout/decode_step_compute_s"] = median_time(lambda: plain(ids[:, :1]), 5)

    weights = inference_weights(state, worker.config)
    out["sync/bytes_mib"] = sum(t.numel() * t.element_size() for t in weights.values()) / 2**20
    out["sync/plain_copy_s"] = median_time(lambda: [t.clone() for t in weights.values()], 5)
    prefix = str(shm_dir / "ling-rl-step-profile")
    bucket = recipe.rollout.weight_sync.bucket_mib << 20
    timings = []
    for _ in range(3):
        timings.append(worker.write_weight_buckets(prefix, "float32", bucket))
    out["sync/gather_inproc_s"] = statistics.median(t["gather_s"] for t in timings)
    out["sync/write_inproc_s"] = statistics.median(t["transfer_s"] for t in timings)
    for path in timings[-1]["paths"]:
        Path(path).unlink(missing_ok=True)
    import torch.distributed as dist

    dist.destroy_process_group()
    return out


def table(preset: str, response_tokens: int, live: dict[str, float], local: dict[str, float]) -> list[str]:
    """The profile as markdown rows: phase, seconds, and what the seconds are."""
    def ms(x: float) -> str:
        return f"{x * 1e3:.1f}"

    gen, decode = live["time/generate"], max(live["decode_steps"], 1.0)
    learner = live["time/learner"]
    sync = live.get("time/sync", 0.0)
    rows = [
        f"**{preset} preset, {int(live['rows'])} responses x <= {response_tokens} tokens "
        f"({live['response_tokens']:.0f} generated), 1 learner rank; medians, first step excluded**",
        "",
        "| phase / part | ms | what it is |",
        "|---|---|---|",
        f"| step | {ms(live['time/step'])} | driver wall per step |",
        f"| generate | {ms(gen)} | driver wall of `rollout.generate` ({decode:.0f} decode steps: "
        f"{ms(gen / decode)} ms per decode step) |",
        f"| - model compute per decode step | {ms(local['rollout/decode_step_compute_s'])} | plain model forward on "
        f"[{int(live['rows'])}, 1] tokens in-process, no KV cache (lower bound); the rest of a decode step is vLLM "
        "scheduling, sampling, log-probs and the Ray call |",
        f"| reward | {ms(live['time/reward'])} | reward pool round trip (Ray call + plugins) |",
        f"| batch | {ms(live['time/batch'])} | `build_train_batch` on the driver (advantages, segmentation, padding) |",
        f"| learner | {ms(learner)} | driver wall of `learner.train_step` (Ray call + the rank's work) |",
        f"| - train_step in-process, FSDP2 1 rank | {ms(local['learner/train_step_fsdp_s'])} | the same batch, "
        f"{int(local['threads'])} thread(s): learner phase minus this = RPC, serialization and the rank sharing the cores with the other roles |",
        f"| - forward+backward, FSDP2 | {ms(local['learner/fwd_bwd_fsdp_s'])} | whole batch as one micro-batch |",
        f"| - forward+backward, plain model | {ms(local['learner/fwd_bwd_plain_s'])} | no FSDP2: the difference is "
        "FSDP2's all-gathers / hooks with one rank |",
        f"| - optimizer step, FSDP2 / plain | {ms(local['learner/optimizer_fsdp_s'])} / "
        f"{ms(local['learner/optimizer_plain_s'])} | clip + AdamW on DTensors / on plain tensors |",
        f"| - Ray empty actor call | {ms(live['ray/empty_call_s'])} | `ping` round trip to the learner actor |",
        f"| - Ray put of the batch | {ms(live['ray/put_batch_s'])} | serialization of the "
        f"{live['batch_mib']:.2f} MiB `TrainBatch` |",
        f"| - Ray call carrying the batch | {ms(live['ray/call_with_batch_s'])} | put + ship + unpickle + return |",
        f"| sync | {ms(sync)} | driver wall of `sync_weights` ({local['sync/bytes_mib']:.2f} MiB fp32) |",
        f"| - gather / transfer / load | {ms(live.get('sync/gather_s', 0.0))} / {ms(live.get('sync/transfer_s', 0.0))}"
        f" / {ms(live.get('sync/load_s', 0.0))} | the sync's own metrics: FSDP2 gather, bucket file write, "
        "vLLM reload |",
        f"| - gather / write in-process | {ms(local['sync/gather_inproc_s'])} / {ms(local['sync/write_inproc_s'])} |"
        " the same export in this process (no Ray) |",
        f"| - plain in-memory copy | {ms(local['sync/plain_copy_s'])} | `clone` of the same tensors: sync is "
        f"{sync / max(local['sync/plain_copy_s'], 1e-9):.0f}x this |",
        f"| other | {ms(live['time/other'])} | curriculum, prompt drawing, request building on the driver |",
        f"| start-up | {live['startup_s'] * 1e3:.0f} | `session.start` (Ray, vLLM engine, learner, reward worker) |",
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--response-tokens", type=int, default=32)
    parser.add_argument("--write-results", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from ling_rl.config import load_recipe

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        recipe = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", [
            f"run.steps={args.steps}", f"model.tiny={args.preset}", "learner.num_ranks=1",
            f"rollout.max_response_tokens={args.response_tokens}", "tracking.wandb.enabled=false",
            "tracking.progress_bar=false", "checkpoint.every=0", "checkpoint.export_hf=false", *args.overrides])
        live, batch, session = drive_session(recipe, Path(tmp) / "run", args.steps)
        load_mid = os.getloadavg()
        local = in_process(recipe, session.model_dir, batch, Path(shm))
    load_after = os.getloadavg()
    loads = " / ".join(f"{x[0]:.2f}" for x in (load_before, load_mid, load_after))
    header = (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()}-core CPU box, "
              f"1-min load average before / between parts / after: {loads}; "
              f"`bench/step_profile.py --preset {args.preset} --steps {args.steps} "
              f"--response-tokens {args.response_tokens}{''.join(' ' + o for o in args.overrides)}`")
    lines = [header, "", *table(args.preset, args.response_tokens, live, local)]
    print("\n".join(lines))
    if args.write_results:
        results = ROOT / "bench" / "RESULTS.md"
        section = "## Step profile (issue 12)"
        intro = "" if section in results.read_text() else \
            f"\n{section}\n\nFrom `bench/step_profile.py` (its docstring says what each row measures).\n"
        with results.open("a") as f:  # appended: other sections of the file are not rewritten
            f.write(intro + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
