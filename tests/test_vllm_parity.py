"""The foundation of the RL loop: the project's model and vLLM agree on the same checkpoint.

Real vLLM (CPU build), fp32, the folder written by the project. Keep this test forever.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ling_rl.models.hf_io import load_model

pytestmark = pytest.mark.vllm

N_PROMPTS = 32


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, vocab, (int(torch.randint(3, 24, (1,), generator=g)),), generator=g).tolist()
            for _ in range(N_PROMPTS)]


def test_sampled_logprobs_match_vllm(vllm_engine, tiny_dir: Path) -> None:
    from vllm import SamplingParams

    model = load_model(tiny_dir)
    prompts = _prompts(model.config.vocab_size)
    params = [SamplingParams(max_tokens=24, temperature=1.0, logprobs=0, seed=100 + i, ignore_eos=True)
              for i in range(N_PROMPTS)]
    outs = vllm_engine.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    worst, total = 0.0, 0
    with torch.no_grad():
        for prompt, out in zip(prompts, outs):
            c = out.outputs[0]
            response = list(c.token_ids)
            ids = torch.tensor([prompt + response])
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)[len(prompt) - 1 : -1]
            ours = logp.gather(1, torch.tensor(response)[:, None])[:, 0]
            theirs = torch.tensor([step[t].logprob for step, t in zip(c.logprobs, response)], dtype=torch.float64)
            worst = max(worst, (ours - theirs).abs().max().item())
            total += len(response)
    assert total == N_PROMPTS * 24
    print(f"log-prob parity over {total} sampled tokens: max |dlogp| = {worst:.2e}")
    assert worst < 1e-3


def test_rollout_texts_equal_vllms_own_detokenization(vllm_engine) -> None:
    """The rollout engine samples with detokenize=False and decodes the finished ids once
    (`generation_texts`): the texts must be vLLM's, incomplete trailing characters included (the
    random tiny model at temperature 1.5 stops mid-character in ~15% of 64-token samples)."""
    from vllm import SamplingParams

    from ling_rl.rollout.engine import generation_texts

    # Prompts of whole characters, as real prompts are: vLLM's incremental detokenizer starts from
    # the prompt's tail, and a random-id prompt ending mid-character would leak into its text.
    tok = vllm_engine.get_tokenizer()
    prompts = [tok.encode(f"Question: Ann has {i} pens and buys {3 * i + 1} more. How many now?\nAnswer:")
               for i in range(16)]
    params = [SamplingParams(n=8, max_tokens=64, temperature=1.5, seed=1000 * i) for i in range(len(prompts))]
    outs = vllm_engine.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    completions = [c for out in outs for c in out.outputs]
    texts = generation_texts(tok, [list(c.token_ids) for c in completions])
    assert any(c.finish_reason == "stop" for c in completions)  # EOS, a special token, is in the ids
    assert [c.text for c in completions] == texts


def test_greedy_outputs_match_vllm(vllm_engine, tiny_dir: Path) -> None:
    from vllm import SamplingParams

    model = load_model(tiny_dir)
    prompts = _prompts(model.config.vocab_size)
    steps = 16
    outs = vllm_engine.generate([{"prompt_token_ids": p} for p in prompts],
                                SamplingParams(max_tokens=steps, temperature=0.0, ignore_eos=True), use_tqdm=False)
    with torch.no_grad():
        for prompt, out in zip(prompts, outs):
            ids = torch.tensor([prompt])
            for _ in range(steps):
                nxt = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            assert ids[0, len(prompt):].tolist() == list(out.outputs[0].token_ids)


def test_vllm_loads_what_the_project_saves_after_a_round_trip(tmp_path: Path, tiny_dir: Path) -> None:
    """Load -> save through the project, then generate with a fresh vLLM engine in a subprocess
    (a second engine beside the session one would double the memory of the test process)."""
    import subprocess
    import sys

    from ling_rl.models.hf_io import save_model

    out = save_model(load_model(tiny_dir), tmp_path / "resaved", tokenizer_dir=tiny_dir)
    code = (
        "import sys\n"
        "from ling_rl.rollout.vllm_engine import sample_texts\n"
        "if __name__ == '__main__':\n"
        f"    r = sample_texts({str(out)!r}, ['Ann has 3 pens.'], 2, 8, 1.0, 0)\n"
        "    assert len(r[0]) == 2 and all(t for t, _ in r[0]), r\n"
        "    print('generated', r)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generated" in proc.stdout
