"""Hugging Face checkpoint I/O for the Ling model: weight-name mapping, safetensors shards,
`config.json` with `auto_map`, tokenizer files.

The folder written here is the interchange format of the project: vLLM loads it
(`trust_remote_code=True`), the learner loads it, weight sync streams the same names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ling_rl.models.ling_config import CONFIG_FILE, LingConfig, ModelFolderError
from ling_rl.models.ling_moe import LingForCausalLM

_EXPERT_STACKED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)$")
_EXPERT_HF = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_HF_FILES_DIR = Path(__file__).parent / "hf_files"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# MTP layers live in their own file, outside the index: vLLM's BailingMoeV2 loader reads only the
# indexed shards and rejects layers past num_hidden_layers, while the learner wants them.
MTP_FILE = "mtp.safetensors"
GENERATION_CONFIG = "generation_config.json"


def to_hf_weights(state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Project state-dict -> Hugging Face names (stacked experts split into one entry per expert)."""
    for name, tensor in state.items():
        m = _EXPERT_STACKED.match(name)
        if m:
            for e in range(tensor.shape[0]):
                yield f"{m.group(1)}.{e}.{m.group(2)}.weight", tensor[e]
        else:
            yield name, tensor


def from_hf_weights(weights: Iterable[tuple[str, torch.Tensor]], model: LingForCausalLM, source: str,
                    partial: bool = False) -> dict[str, torch.Tensor]:
    """Hugging Face names -> the project's state dict, checked against `model` for missing,
    unexpected and mis-shaped weights (errors name the weight and `source`). `partial`: `weights`
    is one part of the checkpoint (e.g. one layer, all its experts included); weights of the model
    it does not hold are not missing."""
    expected = model.state_dict()
    experts: dict[str, dict[int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights:
        m = _EXPERT_HF.match(name)
        if m:
            experts.setdefault(f"{m.group(1)}.{m.group(3)}", {})[int(m.group(2))] = tensor
            continue
        if name not in expected:
            raise ModelFolderError(f"{source}: unexpected weight {name!r} (not part of this architecture/config)")
        out[name] = tensor
    for name, per_expert in experts.items():
        if name not in expected:
            raise ModelFolderError(f"{source}: unexpected expert weight {name}.* (not part of this config)")
        n_exp = expected[name].shape[0]
        missing = sorted(set(range(n_exp)) - set(per_expert))
        if missing or len(per_expert) != n_exp:
            raise ModelFolderError(f"{source}: {name}: experts {missing or sorted(per_expert)} missing or out of range "
                                   f"(config has num_experts={n_exp})")
        out[name] = torch.stack([per_expert[e] for e in range(n_exp)])
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(out))
    if missing and not partial:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ModelFolderError(f"{source}: missing weight(s) {shown}")
    for name, tensor in out.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelFolderError(f"{source}: weight {name!r} has shape {tuple(tensor.shape)}, "
                                   f"config expects {tuple(expected[name].shape)}")
    return out


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise ModelFolderError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")
    if (folder / MTP_FILE).is_file():
        files.append(MTP_FILE)
    for fname in files:
        if not (folder / fname).is_file():
            raise ModelFolderError(f"{folder}: shard {fname} named in {INDEX_FILE} does not exist")
    return [folder / fname for fname in files]


def read_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def meta_model(folder: str | Path) -> LingForCausalLM:
    """The model of `folder`'s config on the meta device: its structure, no memory. Shard it,
    `to_empty` it, then fill it part by part (`checkpoint_parts`, `read_checkpoint_part`)."""
    with torch.device("meta"):
        return LingForCausalLM(LingConfig.from_folder(Path(folder)))


def checkpoint_parts(model: LingForCausalLM) -> list[str]:
    """The parts a checkpoint is read in, as name prefixes: each decoder (and MTP) layer, then
    the rest (embeddings, final norm, lm_head) as "". Derived from the model, so every rank
    computes the same list without reading the files."""
    return [f"model.layers.{i}." for i in range(len(model.model.layers))] + [""]


def _part_of(name: str, parts: list[str]) -> str:
    m = re.match(r"^model\.layers\.\d+\.", name)
    return m.group(0) if m and m.group(0) in parts else ""


def check_checkpoint(folder: str | Path, model: LingForCausalLM) -> None:
    """Check `folder`'s weight names and shapes against `model` from the files' headers alone
    (no tensor data is read); raises `ModelFolderError` like `from_hf_weights`."""
    source = str(folder)
    headers = []
    for path in safetensors_files(Path(folder)):
        with safe_open(str(path), framework="pt") as f:
            headers += [(k, torch.empty(f.get_slice(k).get_shape(), device="meta")) for k in f.keys()]
    from_hf_weights(headers, model, source)


def read_checkpoint_part(folder: str | Path, model: LingForCausalLM, part: str) -> dict[str, torch.Tensor]:
    """The project-named tensors of one part of `checkpoint_parts` (experts stacked), in the
    checkpoint's dtype. Only that part's tensors are read: a loader that goes part by part holds
    at most one layer of the model in memory."""
    parts = checkpoint_parts(model)
    weights = []
    for path in safetensors_files(Path(folder)):
        with safe_open(str(path), framework="pt") as f:
            weights += [(k, f.get_tensor(k)) for k in f.keys() if _part_of(k, parts) == part]
    return from_hf_weights(weights, model, str(folder), partial=True)


def init_computed_buffers(model: LingForCausalLM, device: str | torch.device) -> None:
    """Set the buffers that are computed, not stored (RoPE frequencies), on `device`."""
    for layer in model.model.layers:
        layer.attention.rotary.inv_freq = _inv_freq(model.config).to(device)


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LingForCausalLM:
    """Load a BailingMoeV2 Hugging Face folder (ours or a real Ling 2.0 release)."""
    folder = Path(folder)
    cfg = LingConfig.from_folder(folder)
    with torch.device("meta"):
        model = LingForCausalLM(cfg)
    state = from_hf_weights(read_safetensors(folder), model, str(folder))
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=not cfg.tie_word_embeddings)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.word_embeddings.weight
    init_computed_buffers(model, device)
    # Parameters take `dtype`; buffers stay fp32: `model.to(bfloat16)` would round the computed RoPE
    # frequencies and the router's expert bias (a small running correction) to bf16, which the
    # learner (fp32 buffers under FSDP2) and vLLM do not do.
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


def _inv_freq(cfg: LingConfig) -> torch.Tensor:
    d = cfg.rotary_dim
    return 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))


def save_model(
    model: LingForCausalLM,
    folder: str | Path,
    tokenizer_dir: str | Path | None = None,
    state: dict[str, torch.Tensor] | None = None,
    max_shard_bytes: int = 4 << 30,
    include_mtp: bool = True,
) -> Path:
    """Write a Hugging Face folder atomically: everything goes to a temporary sibling folder that
    replaces `folder` only once complete, so a crash never leaves a half-written model.

    `folder` must be new, empty or a model folder this function wrote (`check_replaceable`): a
    folder holding anything else is the user's and is never replaced. `tokenizer_dir` is the
    source model folder: its tokenizer files are copied, and its `generation_config.json` when it
    has one (its extra stop ids are honoured by vLLM and transformers), else one is written from
    the config's bos/eos/pad ids."""
    folder = Path(folder)
    check_replaceable(folder)
    cfg = model.config
    state = state if state is not None else model.state_dict()
    weights = dict(to_hf_weights({k: v for k, v in state.items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}))
    hf = cfg.to_hf_dict()
    mtp = {k: v for k, v in weights.items() if _is_layer_at_least(k, cfg.num_hidden_layers)}
    weights = {k: v for k, v in weights.items() if k not in mtp}
    if not include_mtp:
        mtp = {}
        hf["num_nextn_predict_layers"] = 0
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    code = [_HF_FILES_DIR / CONFIG_FILE, *_HF_FILES_DIR.glob("modeling_*.py")]
    return write_model_folder(folder, weights, hf, tokenizer_dir, generation, code_files=code, mtp=mtp,
                              max_shard_bytes=max_shard_bytes)


def write_model_folder(folder: str | Path, weights: dict[str, torch.Tensor], config: dict, tokenizer_dir: str | Path | None,
                       generation: dict, code_files: Iterable[Path] = (), mtp: dict[str, torch.Tensor] | None = None,
                       max_shard_bytes: int = 4 << 30) -> Path:
    """Write a Hugging Face folder atomically (see `save_model`) from Hugging Face-named `weights`,
    the `config` of config.json, the tokenizer files of `tokenizer_dir` and its generation config
    (else `generation`, the bos/eos/pad ids), and `code_files` (remote-code classes) copied in."""
    folder = Path(folder)
    check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_shards(weights, tmp, max_shard_bytes)
        if mtp:
            save_file({k: v.detach().contiguous().cpu() for k, v in mtp.items()}, str(tmp / MTP_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for extra in code_files:
            shutil.copy(extra, tmp / extra.name)
        source_gen = Path(tokenizer_dir) / GENERATION_CONFIG if tokenizer_dir is not None else None
        if source_gen is not None and source_gen.is_file():
            shutil.copy(source_gen, tmp / GENERATION_CONFIG)
        else:
            (tmp / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2))
        if tokenizer_dir is not None:
            copy_tokenizer_files(Path(tokenizer_dir), tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
                   "merges.txt", "chat_template.jinja")


def check_replaceable(folder: str | Path) -> None:
    """Refuse a target `save_model` must not replace: anything but a missing folder, an empty one,
    or a model folder it wrote (only the files it writes). Raises `ModelFolderError` naming what
    the folder holds, before any work is done, so a run folder, a source tree or a home directory
    given as the target is never deleted."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: exists and is not a folder; refusing to replace it with a model folder")
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                     if p.is_symlink() or not p.is_file() or not _written_by_save_model(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise ModelFolderError(f"{folder}: not empty and not a model folder written by ling-rl (it holds {shown}); "
                               "refusing to replace it: give a new or empty folder, or remove this one yourself")


_SHARD_FILE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


def _written_by_save_model(name: str) -> bool:
    fixed = {"config.json", GENERATION_CONFIG, CONFIG_FILE, SINGLE_FILE, INDEX_FILE, MTP_FILE, *TOKENIZER_FILES}
    return name in fixed or bool(_SHARD_FILE.match(name)) or (_HF_FILES_DIR / name).is_file()


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    found = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    if "tokenizer.json" not in found and "tokenizer.model" not in found:
        raise ModelFolderError(f"{src}: no tokenizer.json or tokenizer.model to copy")
    for name in found:
        if src.resolve() != dst.resolve():
            shutil.copy(src / name, dst / name)


def inference_weights(state: dict[str, torch.Tensor], cfg: LingConfig) -> dict[str, torch.Tensor]:
    """The Hugging Face weights an inference engine needs: no MTP layers, no tied lm_head copy."""
    return {k: v for k, v in to_hf_weights(state)
            if not _is_layer_at_least(k, cfg.num_hidden_layers) and not (cfg.tie_word_embeddings and k == "lm_head.weight")}


def write_safetensors_atomic(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Write one safetensors file so that readers never see a partial file (rename is atomic)."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def _is_layer_at_least(name: str, n: int) -> bool:
    m = re.match(r"^model\.layers\.(\d+)\.", name)
    return bool(m) and int(m.group(1)) >= n


def _write_shards(weights: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in weights.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().cpu()
        size += nbytes
    meta = {"format": "pt"}
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
