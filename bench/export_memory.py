"""Peak memory of `ling-rl export` (a training checkpoint -> a Hugging Face folder), against the
fp32 size of the model.

    .venv/bin/python bench/export_memory.py                 # small preset and a ~0.45 GB model, 3 runs each
    .venv/bin/python bench/export_memory.py --configs wide --runs 1 --json out.json

For each config the bench writes a source model folder, then a run folder with RUN_DIR/recipe.yaml
and a checkpoint RUN_DIR/checkpoints/step-000001 written by a one-rank `LearnerWorker` (gloo,
fp32) after one train step, so the AdamW state is in it (the driver's own state file holds just
`model_dir`, all an export reads of it). Each run is a fresh process that
imports what `ling-rl export` imports, exports the `tiny` preset's checkpoint once (first-call
allocations go into the baseline), resets its RSS high-water mark (`/proc/self/clear_refs`), reads
its RSS (the baseline), exports the measured checkpoint through `export_checkpoint` (the function
the command calls), and reports the peak RSS (VmHWM) minus the baseline. glibc's mmap threshold
is fixed at 1 MiB so that freed tensors leave the RSS. The table gives the median over `--runs`
runs and the ratio to the fp32 bytes of the model's parameters and buffers.
Goal (issue 22): peak increase <= 1.3 x the fp32 model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

_CHILD = """
import json, sys
from pathlib import Path

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

import ling_rl.commands.cli  # what `ling-rl export` imports before it runs
from ling_rl.commands.export import export_checkpoint

warm_ckpt, ckpt, out = (Path(a) for a in sys.argv[1:4])
export_checkpoint(warm_ckpt, out.with_name(out.name + "-warm"))
Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on
before = rss("VmRSS")
export_checkpoint(ckpt, out)
print(json.dumps({"rss_before": before, "rss_peak_increase": rss("VmHWM") - before}))
"""


def _write_model(kind: str, folder: Path) -> Path:
    from ling_rl.models.hf_io import save_model
    from ling_rl.models.tiny import PRESETS, build_tiny_model, init_tiny

    if kind in PRESETS:
        return init_tiny(folder, preset=kind, seed=0)
    # ~0.45 GB fp32 (the `wide` model of bench/load_memory.py), with the tiny preset's tokenizer.
    cfg = replace(PRESETS["small"], hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
                  moe_intermediate_size=256, num_experts=32, n_group=4, topk_group=2, num_attention_heads=8)
    tokenizer = init_tiny(folder.with_name(folder.name + "-tokenizer"), preset="tiny", seed=0)
    return save_model(build_tiny_model(cfg, seed=0), folder, tokenizer_dir=tokenizer)


def _write_checkpoint(model_dir: Path, run_dir: Path) -> tuple[Path, int]:
    """A run folder with one checkpoint of `model_dir`, written by a one-rank `LearnerWorker` after
    one train step (so the AdamW state is in it); (checkpoint, fp32 bytes of the model)."""
    import torch
    import torch.distributed as dist
    import yaml

    from ling_rl.config import parse_recipe
    from ling_rl.driver.checkpoint import DRIVER_STATE
    from ling_rl.driver.session import learner_sections
    from ling_rl.learner.worker import LearnerWorker
    from ling_rl.types import TrainBatch

    tree = {"model": {"path": str(model_dir), "dtype": "float32"}, "data": {"train": "x.jsonl"},
            "rewards": [{"name": "exact_answer"}], "algorithm": {"mismatch": {"type": "none"}},
            "learner": {"device": "cpu", "precision": "fp32", "num_ranks": 1, "micro_batch_tokens": 64}}
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(tree))
    worker = LearnerWorker(0, 1, learner_sections(parse_recipe(tree)), str(model_dir), threads=2)
    worker.setup(f"file://{run_dir}/pg")
    try:
        g = torch.Generator().manual_seed(0)
        mask = torch.zeros(2, 16, dtype=torch.bool)
        mask[:, 4:] = True
        worker.train_step(TrainBatch(input_ids=torch.randint(10, 1000, (2, 16), generator=g), response_mask=mask,
                                     advantages=torch.randn(2, 1, generator=g) * mask, unit_ids=mask.long().cumsum(1) * mask,
                                     inf_logprobs=-3.0 * mask))
        ckpt = run_dir / "checkpoints" / "step-000001"
        ckpt.mkdir(parents=True)
        worker.save_checkpoint(str(ckpt))
        size = sum(t.numel() * 4 for t in worker.model.parameters()) + sum(b.numel() * 4 for b in worker.model.buffers())
    finally:
        dist.destroy_process_group()
    (ckpt / DRIVER_STATE).write_text(json.dumps({"model_dir": str(model_dir)}))
    return ckpt, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["small", "wide"], choices=["small", "wide"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warm, _ = _write_checkpoint(_write_model("tiny", Path(tmp) / "tiny"), Path(tmp) / "run-tiny")
        for kind in args.configs:
            ckpt, size = _write_checkpoint(_write_model(kind, Path(tmp) / kind), Path(tmp) / f"run-{kind}")
            runs = []
            for i in range(args.runs):
                out = Path(tmp) / f"export-{kind}-{i}"
                proc = subprocess.run([sys.executable, "-c", _CHILD, str(warm), str(ckpt), str(out)], env=env,
                                      capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    raise SystemExit(f"export of {kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            increase = statistics.median(r["rss_peak_increase"] for r in runs)
            row = {"config": kind, "model_fp32_mb": size / 1e6, "rss_increase_mb": increase / 1e6,
                   "ratio": increase / size, "rss_increase_runs_mb": [round(r["rss_peak_increase"] / 1e6, 1) for r in runs],
                   "rss_before_mb": statistics.median(r["rss_before"] for r in runs) / 1e6}
            rows.append(row)
            print(f"{kind:6s} model={row['model_fp32_mb']:.1f} MB | RSS before {row['rss_before_mb']:.0f} MB, peak increase "
                  f"{row['rss_increase_mb']:.1f} MB = {row['ratio']:.2f} x the fp32 model (runs {row['rss_increase_runs_mb']})",
                  flush=True)
    print(f"loadavg: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
