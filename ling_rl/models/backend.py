"""Model backends: what the learner, the weight sync and the export need of a policy architecture.

    backend = resolve_backend(folder, "auto")    # from config.json's `architectures`
    model = backend.meta_model(folder)           # structure on the meta device
    for layer in backend.decoder_layers(model): fully_shard(layer)
    ...fill part by part: backend.checkpoint_parts / read_checkpoint_part ...
    out = model(input_ids, positions=..., head=chunked_head)   # a `LingOutput` on every backend

Two backends are registered (`BACKENDS`, the one registry of this extension point):

- `ling`: the project's own BailingMoeV2 implementation (`ling_rl.models.ling_moe`): routing
  replay (R2/R3), MTP, float8 training, the reference path;
- `hf`: any Hugging Face causal LM through transformers' own modeling code
  (`ling_rl.models.hf_backend`): dense Qwen3 and Llama, and Qwen3-MoE with routing replay
  through its router adapter (`ling_rl.models.hf_routers`), tested here.

Every policy model, whichever backend built it, is called the same way (`PolicyModel`) and names
its backend (`backend_name`), so code holding a model finds its backend (`backend_of`) without
branching on the architecture. What a backend cannot do is declared (`supports`, per
model type in `features`) and refused by the recipe check with the recipe key named (`recipe_problems`), never silently ignored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ling_rl.models.ling_config import ModelFolderError, read_config_json
from ling_rl.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ling_rl.config import Recipe
    from ling_rl.models.hf_routers import RoutingLayout

Feature = Literal["routing_replay", "mtp", "fp8", "compile", "expert_bias"]
"""Learner features a backend may lack: R2/R3 routing replay, MTP training, float8 training
(`learner.precision: fp8`, routed experts included), `torch.compile` of the decoder layers, the
aux-loss-free expert-bias update of the routers."""

# The recipe check's table: (feature, recipe key, the key's value, whether that value uses the
# feature, the setting that does without it).
_FEATURE_KEYS: list[tuple[Feature, str, Callable[[Any], Any], Callable[[Any], bool], str]] = [
    ("routing_replay", "rollout.routing_replay", lambda r: r.rollout.routing_replay, lambda v: v != "none", "none"),
    ("mtp", "model.mtp.enabled", lambda r: r.model.mtp.enabled, bool, "false"),
    ("fp8", "learner.precision", lambda r: r.learner.precision, lambda v: v == "fp8", "fp32 or bf16"),
    ("compile", "learner.compile", lambda r: r.learner.compile, bool, "false"),
    ("expert_bias", "learner.freeze_expert_bias", lambda r: r.learner.freeze_expert_bias, lambda v: not v, "true"),
]


class ModelBackend(ABC):
    """One family of policy architectures (see the module docstring). Stateless: one instance
    per backend lives in `BACKENDS`."""

    name: ClassVar[str]
    supports: ClassVar[frozenset[Feature]]

    @abstractmethod
    def claims(self, architectures: list[str]) -> bool:
        """Whether `architectures` (config.json's) is this backend's (`model.backend: auto`)."""

    @abstractmethod
    def check_folder(self, folder: str | Path) -> None:
        """Read `folder`'s config (no weights); raise `ModelFolderError` naming what is wrong."""

    @abstractmethod
    def meta_model(self, folder: str | Path) -> nn.Module:
        """The model of `folder`'s config on the meta device, parameters in fp32."""

    @abstractmethod
    def decoder_layers(self, model: nn.Module) -> list[nn.Module]:
        """The FSDP2 units, in order: every decoder layer (trunk, then MTP layers)."""

    @abstractmethod
    def trunk_layers(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers of the forward pass proper (no MTP layers)."""

    @abstractmethod
    def mtp_layers(self, model: nn.Module) -> list[nn.Module]:
        """Multi-token-prediction layers ([] when the model has none)."""

    @abstractmethod
    def routers(self, model: nn.Module) -> list[nn.Module]:
        """The MoE routers, one per MoE layer in order ([] for a dense model)."""

    @abstractmethod
    def routing_layout(self, folder: str | Path) -> RoutingLayout:
        """Where `folder`'s model routes (from its config): MoE layers, top_k, experts; no MoE
        layers for a dense model or one this backend cannot replay the routing of."""

    def features(self, model_type: str | None) -> frozenset[Feature]:
        """The features this backend has for config.json's `model_type` (None: not known yet)."""
        return self.supports

    @abstractmethod
    def fp32_units(self, model: nn.Module) -> list[nn.Module]:
        """Modules sharded as their own FSDP2 unit computing in fp32 whatever the precision
        (the Ling routers), before their decoder layer."""

    @abstractmethod
    def checkpoint_parts(self, model: nn.Module) -> list[str]:
        """Name prefixes a checkpoint is read in (one decoder layer each, then "" for the rest)."""

    @abstractmethod
    def check_checkpoint(self, folder: str | Path, model: nn.Module) -> None:
        """Check the weight names and shapes of `folder` against `model` from the file headers."""

    @abstractmethod
    def read_checkpoint_part(self, folder: str | Path, model: nn.Module, part: str) -> dict[str, torch.Tensor]:
        """The state-dict tensors of one part of `checkpoint_parts`, read from `folder`."""

    @abstractmethod
    def init_computed_buffers(self, model: nn.Module, device: str | torch.device) -> None:
        """Set the buffers that are computed, not stored (RoPE frequencies), after `to_empty`."""

    @abstractmethod
    def weight_groups(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(state-dict prefix, module) of every part the engines load, in checkpoint order."""

    @abstractmethod
    def inference_weights(self, model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` (model names, any subset) under the Hugging Face names the engines load."""

    @abstractmethod
    def save(self, model: nn.Module, folder: str | Path, tokenizer_dir: str | Path | None = None,
             state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a Hugging Face folder (config, safetensors, tokenizer) that vLLM and transformers load."""

    def load(self, folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
        """The whole model of `folder` in fp32 on `device`, without a process group (export, tests)."""
        model = self.meta_model(folder)
        self.check_checkpoint(folder, model)
        model.to_empty(device=device)
        state: dict[str, Any] = {}
        for part in self.checkpoint_parts(model):
            state.update(self.read_checkpoint_part(folder, model, part))
        model.load_state_dict(state, strict=False)  # a tied lm_head is the embedding's tensor
        self.init_computed_buffers(model, device)
        return model


BACKENDS: Registry[ModelBackend] = Registry("model backend")
"""`model.backend` -> backend (`ling`, `hf`); `auto` picks the one that claims the folder's architecture."""


def _register_builtins() -> None:
    # Imported here, not at module top: each backend module imports this one for `ModelBackend`.
    from ling_rl.models.hf_backend import HFBackend
    from ling_rl.models.ling_backend import LingBackend

    for backend in (LingBackend(), HFBackend()):
        if backend.name not in BACKENDS:
            BACKENDS.add(backend.name, backend)


def architectures(folder: str | Path) -> list[str]:
    """config.json's `architectures` of `folder`."""
    path = Path(folder) / "config.json"
    data = read_config_json(folder)
    archs = data.get("architectures") or []
    if not isinstance(archs, list) or not archs:
        raise ModelFolderError(f"{path}: no 'architectures' list; cannot tell which model backend loads it")
    return [str(a) for a in archs]


def backend_named(name: str) -> ModelBackend:
    """The backend registered as `name` (`ling`, `hf`)."""
    _register_builtins()
    return BACKENDS.get(name)


def resolve_backend(folder: str | Path, choice: str = "auto") -> ModelBackend:
    """The backend of `folder`: `choice` (`model.backend`) when not `auto`, else the one backend
    that claims config.json's architecture. Raises `ModelFolderError` naming the folder and key."""
    _register_builtins()
    archs = architectures(folder)
    if choice != "auto":
        backend = BACKENDS.get(choice)
        if not backend.claims(archs):
            raise ModelFolderError(f"model.backend: {choice} cannot load {folder} (architectures={archs})")
        return backend
    claiming = [BACKENDS.get(n) for n in BACKENDS if BACKENDS.get(n).claims(archs)]
    if not claiming:
        raise ModelFolderError(f"{folder}: architectures={archs} is neither BailingMoeV2 (backend ling) nor a "
                               "causal LM transformers knows (backend hf)")
    return claiming[0]  # the claims are disjoint: ling's architecture is not one of transformers'


def backend_of(model: nn.Module) -> ModelBackend:
    """The backend that built `model` (every policy model class names it in `backend_name`)."""
    return backend_named(model.backend_name)  # type: ignore[arg-type]


def recipe_problems(recipe: Recipe, backend: ModelBackend, model_type: str | None = None) -> list[str]:
    """One line per recipe setting `backend` cannot honour for `model_type` (config.json's),
    naming the recipe key."""
    problems = []
    supported = backend.features(model_type)
    for feature, key, value_of, uses, fix in _FEATURE_KEYS:
        value = value_of(recipe)
        if uses(value) and feature not in supported:
            of = f", model_type {model_type}" if model_type else ""
            problems.append(f"{key}: {str(value).lower()} is not supported by the {backend.name} model backend yet "
                            f"(model.backend={recipe.model.backend} resolved to {backend.name}{of}); set it to {fix}, "
                            "or train a Ling (BailingMoeV2) model")
    return problems


def model_type(folder: str | Path) -> str | None:
    """config.json's `model_type` of `folder` (None when it has none)."""
    value = read_config_json(folder).get("model_type")
    return str(value) if value is not None else None


def check_recipe_backend(recipe: Recipe, folder: str | Path | None = None) -> ModelBackend:
    """The backend that trains the recipe's model (from `folder`, else from `model.tiny`'s name),
    after checking the recipe asks nothing of it that it lacks: `RecipeError` with one line per
    offending key."""
    from ling_rl.config import RecipeError
    from ling_rl.models.tiny import tiny_backend, tiny_model_type

    if folder is not None:
        backend = resolve_backend(folder, recipe.model.backend)
        kind = model_type(folder)
    else:
        backend = backend_named(tiny_backend(str(recipe.model.tiny)))
        kind = tiny_model_type(str(recipe.model.tiny))
        if recipe.model.backend not in ("auto", backend.name):
            raise RecipeError(f"model.backend: {recipe.model.backend} cannot train model.tiny={recipe.model.tiny} "
                              f"(a {backend.name} model); set model.backend to auto or {backend.name}")
    problems = recipe_problems(recipe, backend, kind)
    if problems:
        raise RecipeError("\n".join(problems))
    return backend
