"""Architecture hyper-parameters of a Ling 2.0 (BailingMoeV2) model.

`LingConfig` mirrors the `config.json` of a Hugging Face BailingMoeV2 checkpoint (Ling-mini-2.0,
Ling-flash-2.0, ...) field for field, so a real folder loads unchanged and an exported folder is
read by vLLM and transformers. Validation happens here, once, with errors that name the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ARCHITECTURE = "BailingMoeV2ForCausalLM"
MODEL_TYPE = "bailing_moe_v2"
CONFIG_FILE = "configuration_bailing_moe_v2.py"


class ModelFolderError(ValueError):
    """A model folder or config that cannot be used, with the reason and the path."""


@dataclass
class LingConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # dense MLP of the first `first_k_dense_replace` layers
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    moe_intermediate_size: int
    num_experts: int
    num_experts_per_tok: int
    num_shared_experts: int = 1
    moe_shared_expert_intermediate_size: int | None = None
    first_k_dense_replace: int = 1
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    score_function: str = "sigmoid"
    moe_router_enable_expert_bias: bool = True
    router_dtype: str = "fp32"
    use_qk_norm: bool = True
    use_rmsnorm: bool = True
    use_bias: bool = False
    use_qkv_bias: bool = False
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    num_nextn_predict_layers: int = 0
    mtp_loss_scaling_factor: float = 0.0
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    output_dropout: float = 0.0
    initializer_range: float = 0.02
    norm_head: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)  # unknown config.json keys, kept on export

    def __post_init__(self) -> None:
        self.validate()

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def shared_intermediate_size(self) -> int:
        per_expert = self.moe_shared_expert_intermediate_size or self.moe_intermediate_size
        return per_expert * self.num_shared_experts

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace

    def validate(self) -> None:
        def bad(name: str, why: str) -> ModelFolderError:
            return ModelFolderError(f"model config: {name}={getattr(self, name)!r} {why}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                     "num_experts", "num_experts_per_tok", "moe_intermediate_size", "intermediate_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            raise bad("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if self.num_experts_per_tok > self.num_experts:
            raise bad("num_experts_per_tok", f"exceeds num_experts={self.num_experts}")
        if self.num_experts % self.n_group:
            raise bad("n_group", f"must divide num_experts={self.num_experts}")
        if not 1 <= self.topk_group <= self.n_group:
            raise bad("topk_group", f"must be in [1, n_group={self.n_group}]")
        if self.topk_group * (self.num_experts // self.n_group) < self.num_experts_per_tok:
            raise bad("topk_group", "selects fewer experts than num_experts_per_tok")
        if self.score_function not in ("sigmoid", "softmax"):
            raise bad("score_function", "must be 'sigmoid' or 'softmax'")
        if self.score_function == "sigmoid" and self.n_group > 1 and self.num_experts // self.n_group < 2:
            raise bad("n_group", "leaves fewer than 2 experts per group (group score sums the top 2)")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise bad("partial_rotary_factor", f"gives rotary dim {self.rotary_dim}; need an even dim in (0, head_dim]")
        if self.hidden_act != "silu":
            raise bad("hidden_act", "is not supported (Ling 2.0 uses 'silu')")
        if self.rope_scaling not in (None, {}) and self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) != "default":
            raise bad("rope_scaling", "is not supported yet (only default RoPE)")
        if self.first_k_dense_replace < 0 or self.first_k_dense_replace > self.num_hidden_layers:
            raise bad("first_k_dense_replace", f"must be in [0, num_hidden_layers={self.num_hidden_layers}]")

    # --- config.json ---------------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], source: str = "config") -> LingConfig:
        archs = data.get("architectures") or []
        if ARCHITECTURE not in archs:
            raise ModelFolderError(
                f"{source}: architectures={archs!r} is not supported; ling-rl loads {ARCHITECTURE} checkpoints"
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [f.name for f in fields(cls) if f.name in _REQUIRED and f.name not in kwargs]
        if missing:
            raise ModelFolderError(f"{source}: missing required key(s) {', '.join(missing)}")
        extra = {k: v for k, v in data.items() if k not in known and k not in _WRITTEN_BY_EXPORT}
        try:
            return cls(**kwargs, extra=extra)
        except ModelFolderError as e:
            raise ModelFolderError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        data.update(self.extra)
        data.update(
            architectures=[ARCHITECTURE],
            model_type=MODEL_TYPE,
            auto_map={"AutoConfig": f"{CONFIG_FILE[:-3]}.BailingMoeV2Config",
                      "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM"},
        )
        return data

    @classmethod
    def from_folder(cls, folder: str | Path) -> LingConfig:
        return cls.from_hf_dict(read_config_json(folder), source=str(Path(folder) / "config.json"))


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """`folder`'s config.json as a dict; `ModelFolderError` naming the file when it is missing or not JSON."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{path}: invalid JSON ({e})") from None


_REQUIRED = {f.name for f in fields(LingConfig) if f.default is not f.default_factory and f.name in {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "moe_intermediate_size", "num_experts", "num_experts_per_tok"}}
_WRITTEN_BY_EXPORT = {"architectures", "model_type", "auto_map", "transformers_version"}
