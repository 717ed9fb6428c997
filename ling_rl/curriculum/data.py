"""Prompt datasets: loading (HF `datasets`), validation, tokenization and a resumable cursor."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ling_rl.curriculum.config import DataConfig
from ling_rl.types import Sample


class DatasetError(ValueError):
    """A dataset that cannot be used; names the file and the row."""


_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(source: str, max_rows: int | None = None, local_only: bool = False,
              split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local JSONL/JSON/parquet/CSV file, a local dataset folder, or a Hugging Face hub
    dataset (`org/name`).

    `split` (`data.splits`) picks the split of a folder or hub dataset; None takes its only split,
    else its `train` split (a dataset with several splits and no `train` must name one). A single
    file is one split and takes no `split`. CSV cells are read as text, as written: type guessing
    would turn an answer "007" into 7.0 and "NA" or a blank cell into None.

    `local_only` (`ling-rl check`): a hub dataset is read from the local Hugging Face cache, never
    downloaded, and only its first `max_rows` (default `CHECK_HUB_ROWS`) rows are streamed;
    `NotCachedError` when it is not cached."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source)
    if path.suffix in _FORMATS:
        if not path.is_file():
            raise DatasetError(f"{source}: dataset file not found")
        if split is not None:
            raise DatasetError(f"{source}: a single file has no splits, but data.splits gives it split {split!r}")
        if path.suffix == ".csv":
            return _csv_rows(path, max_rows)
        try:
            ds = datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as e:  # datasets wraps parse errors in several exception types
            raise DatasetError(f"{source}: cannot be read as {path.suffix[1:]}: {e}") from None
    elif local_only and not path.exists():
        folder = str(cached_hub_dataset(source))
        stream = datasets.load_dataset(folder, split=_split_of(source, folder, split), streaming=True)
        return list(stream.take(max_rows or CHECK_HUB_ROWS))
    else:
        chosen = _split_of(source, source, split)
        try:
            ds = datasets.load_dataset(source, split=chosen)
        except ValueError as e:  # e.g. a split that exists in the metadata but has no data files
            raise DatasetError(f"{source}: cannot load split {chosen!r}: {e}") from None
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds.to_list()


def _split_of(source: str, location: str, split: str | None) -> str:
    """The split of `source` (read from `location`) to load: `split` when it exists, else the only
    split, else `train`; `DatasetError` naming the splits it has otherwise."""
    import datasets

    try:
        names = list(datasets.get_dataset_split_names(location))
    except FileNotFoundError as e:
        raise DatasetError(f"{source}: no such local dataset folder or hub dataset ({e})") from None
    if split is not None:
        if split not in names:
            raise DatasetError(f"{source}: no split {split!r} (data.splits); its splits: {', '.join(names)}")
        return split
    if len(names) == 1:
        return names[0]
    if "train" in names:
        return "train"
    raise DatasetError(f"{source}: has splits {', '.join(names)} and none is 'train'; name the one to use in "
                       f"data.splits ({{{source}: {names[0]}}})")


def _csv_rows(path: Path, max_rows: int | None) -> list[dict[str, Any]]:
    """A CSV file's rows as text: every cell the string written in the file ('' for a blank one)."""
    import csv

    rows: list[dict[str, Any]] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                if max_rows is not None and len(rows) >= max_rows:
                    break
                if None in row or None in row.values():  # more cells, or fewer, than the header names
                    raise DatasetError(f"{path}: line {reader.line_num} does not have the "
                                       f"{len(reader.fieldnames or [])} cells its header names")
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot be read as csv: {e}") from None
    return rows


CHECK_HUB_ROWS = 1000
"""Rows of a cached hub dataset that `ling-rl check` reads (a local file is read whole, as in training)."""


class NotCachedError(DatasetError):
    """A hub dataset that is not in the local Hugging Face cache (check never downloads)."""


def cached_hub_dataset(name: str) -> Path:
    """The local snapshot folder of hub dataset `name`; `NotCachedError` when it was never downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, repo_type="dataset", local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):  # ValueError: not a valid repo id
        raise NotCachedError(f"{name}: not a local file and not in the Hugging Face cache") from None


def chat_messages(user: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation of one prompt (`data.chat_template`): an optional system message, then the user's."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [*system, {"role": "user", "content": user}]


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], **template_kwargs: Any) -> str:
    """`messages` through the tokenizer's chat template, ending with the opening of the assistant's
    turn (`add_generation_prompt`): the text the model continues. The text is tokenized afterwards
    without special tokens added, since the template already writes the ones it wants.
    `template_kwargs` go to the template (e.g. `tools=` schemas)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(f"data.chat_template is true but the tokenizer ({getattr(tokenizer, 'name_or_path', '?')}) "
                           "has no chat template (no `chat_template` in tokenizer_config.json or chat_template.jinja)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)


def render_chat_reply(tokenizer: Any, messages: list[dict[str, Any]], reply: str | dict[str, Any],
                      **template_kwargs: Any) -> tuple[str, str]:
    """(prompt, response) texts of a supervised example (DFT) in the chat template: the prompt as
    `render_chat` renders it, and the response as the template renders the assistant's turn after it.
    `reply` is the assistant's text, or its whole message (e.g. with `tool_calls`)."""
    prompt = render_chat(tokenizer, messages, **template_kwargs)
    message = {"role": "assistant", "content": reply} if isinstance(reply, str) else reply
    whole = tokenizer.apply_chat_template([*messages, message], tokenize=False, **template_kwargs)
    if not whole.startswith(prompt):
        raise DatasetError("data.chat_template: the tokenizer's chat template does not render an assistant message "
                           "as a continuation of its generation prompt, so a DFT response cannot be cut from it")
    return prompt, whole[len(prompt):]


def reply_token_ids(tokenizer: Any, reply: str) -> list[int]:
    """The tokens a model samples for a rendered reply (`render_chat_reply`'s response): up to and
    including the first EOS, with EOS appended when the template's turn does not write it, so the
    model learns to stop where generation stops."""
    eos = tokenizer.eos_token_id
    ids = tokenizer.encode(reply, add_special_tokens=False)
    return ids[: ids.index(eos) + 1] if eos in ids else [*ids, eos]


@dataclass
class Cursor:
    """Position in the shuffled stream of prompts: part of every checkpoint."""

    epoch: int = 0
    index: int = 0


class PromptSource:
    """Yields batches of `Sample`s in a seeded order that is reproducible from a `Cursor`."""

    def __init__(self, cfg: DataConfig, tokenizer: Any | None, max_prompt_tokens: int,
                 rows: list[dict[str, Any]] | None = None, tools: list[dict[str, Any]] | None = None) -> None:
        """Validates every row. `rows` replaces reading `cfg.train` (check reads cached hub data
        itself); without a `tokenizer` (check, model not available yet) prompt lengths are not checked.
        `tools`: the JSON schemas of an environment's tools, shown by the chat template in every prompt."""
        self.cfg = cfg
        self.tools = tools
        rows = load_rows(cfg.train, cfg.max_rows, split=cfg.splits.get(cfg.train)) if rows is None else rows
        if not rows:
            raise DatasetError(f"{cfg.train}: the dataset is empty")
        self.samples = [self._sample(i, row, tokenizer, max_prompt_tokens) for i, row in enumerate(rows)]
        self.cursor = Cursor()
        self._order = self._permutation(0)

    def _sample(self, i: int, row: dict[str, Any], tokenizer: Any | None, max_prompt_tokens: int) -> Sample:
        where = f"{self.cfg.train}: row {i}"
        if self.cfg.prompt_key not in row or not isinstance(row[self.cfg.prompt_key], str):
            raise DatasetError(f"{where}: no text column {self.cfg.prompt_key!r} (data.prompt_key); columns: {sorted(row)}")
        try:
            text = self.cfg.prompt_template.format(prompt=row[self.cfg.prompt_key])
        except (KeyError, IndexError) as e:
            raise DatasetError(f"data.prompt_template: unknown placeholder {e}; only {{prompt}} is available") from None
        messages = None
        if self.cfg.chat_template:
            messages = chat_messages(text, self.cfg.system_prompt)
            if tokenizer is not None:  # without one (check), the prompt stays the user's message
                text = render_chat(tokenizer, messages, **({"tools": self.tools} if self.tools else {}))
        ids = tokenizer.encode(text, add_special_tokens=False) if tokenizer is not None else []
        if len(ids) > max_prompt_tokens:
            raise DatasetError(f"{where}: prompt has {len(ids)} tokens, above rollout.max_prompt_tokens={max_prompt_tokens}")
        columns = {k: v for k, v in row.items() if k != self.cfg.prompt_key}
        if self.cfg.answer_key in columns:
            columns["answer"] = columns[self.cfg.answer_key]
        return Sample(id=str(row.get("id", i)), prompt=text, prompt_ids=ids, columns=columns, messages=messages,
                      source=self.cfg.train)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        if self.cfg.shuffle:
            random.Random(self.cfg.seed * 100_003 + epoch).shuffle(order)
        return order

    def next_batch(self, n: int) -> list[Sample]:
        batch = []
        while len(batch) < n:
            if self.cursor.index >= len(self._order):
                self.cursor = Cursor(self.cursor.epoch + 1, 0)
                self._order = self._permutation(self.cursor.epoch)
            batch.append(self.samples[self._order[self.cursor.index]])
            self.cursor.index += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.cursor.epoch, "index": self.cursor.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.cursor = Cursor(**state)
        self._order = self._permutation(self.cursor.epoch)
