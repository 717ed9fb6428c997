"""Reading an offline W&B run back from its files, to check what W&B would upload."""

from __future__ import annotations

import glob
import json
import struct
import time
from pathlib import Path
from typing import Any

# The file is W&B's transaction log: a 7-byte header (":W&B", magic, version), then LevelDB-log
# framed records (32 KiB blocks; each chunk: crc32c u32, length u16, type u8) holding protobuf
# `Record`s. Reading it back checks what W&B would upload, not what we asked it to log.

_BLOCK = 32 * 1024
_FULL, _LAST = 1, 4


def wandb_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, chunks, records = 7, [], []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer too small for a chunk header: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        body = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        chunks.append(body)
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def finished_records(path: Path, timeout_s: float = 20.0) -> list[Any]:
    """The records of a finished run's file, once W&B has written them all.

    `run.finish()` can return before W&B's core process has written the file out (seen with
    0.31: a 7-byte file right after finish, complete a moment later), so wait for the `exit` record.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(path) if path.is_file() else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def offline_runs(run_dir: Path, run_id: str) -> list[Path]:
    """The .wandb files of the offline run `run_id` under `run_dir`, oldest first."""
    return sorted(Path(p) for p in glob.glob(str(run_dir / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb")))


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    """One dict per `run.log` call: W&B's `_step` plus the logged keys (JSON-decoded)."""
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return rows
