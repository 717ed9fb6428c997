"""`ling-rl plan`'s learner estimate against the measured peak memory of a real learner step on CPU.

    .venv/bin/python bench/plan_validate.py            # tiny, small and a larger synthetic model

Each case runs in a fresh subprocess: one `LearnerWorker` rank (world size 1, gloo, fp32, the
learner's own sharded build from a model folder) does `setup` and one `train_step` on a batch of
two micro-batches of `learner.micro_batch_tokens` tokens, twice (from the second step on, the
optimizer state exists during forward and backward, and the first micro-batch's gradients during
the second one's: the steady state the planner adds up). Measured: peak RSS (ru_maxrss) minus the RSS of the
same process after importing torch and ling_rl and before building anything (glibc told to mmap
tensors above 64 KiB, so that freed tensors leave RSS); so the torch runtime,
which dominates the tiny preset, is not counted on either side. Planned: the planner's learner total
for the same recipe minus its process-runtime row. `medium` is a synthetic config (hidden 512,
vocab 32k) written with `ling_rl.models.hf_io.save_model`, big enough that the model, not the
runtime, dominates.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # name: (preset or synthetic overrides, rows, tokens per row)
    "tiny": ("tiny", 16, 256),
    "small": ("small", 16, 256),
    "medium": ("medium", 8, 256),
}


def _config(name: str):
    from ling_rl.models.tiny import PRESETS

    if name == "medium":
        return replace(PRESETS["small"], vocab_size=32000, hidden_size=512, intermediate_size=1024,
                       num_attention_heads=8, num_key_value_heads=2, moe_intermediate_size=256,
                       num_hidden_layers=4, num_nextn_predict_layers=0)
    return replace(PRESETS[name], num_nextn_predict_layers=0)


def _recipe(model_dir: str, tokens: int):
    from ling_rl.config import parse_recipe

    return parse_recipe({
        "model": {"path": model_dir, "dtype": "float32"},
        "data": {"train": str(ROOT / "data" / "arith" / "train.jsonl")},
        "rewards": [{"name": "exact_answer"}],
        "rollout": {"prompts_per_step": 1, "group_size": 2},
        "learner": {"num_ranks": 1, "precision": "fp32", "micro_batch_tokens": tokens, "device": "cpu"},
    })


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(name: str, rows: int, length: int) -> dict:
    import torch

    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker
    from ling_rl.models.hf_io import save_model
    from ling_rl.models.tiny import build_tiny_model
    from ling_rl.commands.plan import GIB, PROCESS_RUNTIME_BYTES, plan_memory
    from ling_rl.types import TrainBatch

    cfg = _config(name)
    tmp = tempfile.mkdtemp()
    model = build_tiny_model(cfg)
    save_model(model, Path(tmp) / "model")
    del model
    recipe = _recipe(str(Path(tmp) / "model"), rows * length)
    baseline = _rss()
    worker = LearnerWorker(0, 1, learner_sections(recipe), str(Path(tmp) / "model"), threads=2)
    worker.setup(f"file://{tmp}/pg")
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        ids = torch.randint(0, cfg.vocab_size, (2 * rows, length), generator=g)
        mask = torch.zeros(2 * rows, length, dtype=torch.bool)
        mask[:, length // 4:] = True
        batch = TrainBatch(input_ids=ids, response_mask=mask, advantages=torch.randn(2 * rows, length, generator=g) * mask,
                           unit_ids=torch.zeros(2 * rows, length, dtype=torch.long), inf_logprobs=torch.zeros(2 * rows, length))
        worker.train_step(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    learner = plan_memory(recipe, cfg, host_memory_gib=1024)[0]
    planned = learner.total - PROCESS_RUNTIME_BYTES
    rows_gib = {r.name: round(r.bytes / GIB, 4) for r in learner.rows if r.counted}
    return {"case": name, "tokens": rows * length, "measured_gib": (peak - baseline) / GIB,
            "planned_gib": planned / GIB, "baseline_gib": baseline / GIB, "rows": rows_gib}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    # Tensors above 64 KiB go through mmap and back to the OS when freed, so that RSS follows the
    # live tensors rather than glibc's heap high-water mark (fragmentation after free).
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}
    print(f"{'case':8s} {'tokens':>6s} {'measured GiB':>13s} {'planned GiB':>12s} {'planned/measured':>17s}  baseline GiB")
    for name, (_, rows, length) in CASES.items():
        proc = subprocess.run([sys.executable, __file__, "--child", name, str(rows), str(length)], env=env, cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{r['case']:8s} {r['tokens']:6d} {r['measured_gib']:13.3f} {r['planned_gib']:12.3f} "
              f"{r['planned_gib'] / r['measured_gib']:17.2f}  {r['baseline_gib']:.3f}")
        print(f"         planned rows: {r['rows']}")


if __name__ == "__main__":
    main()
