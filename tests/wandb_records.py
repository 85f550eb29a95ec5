"""Read an offline W&B run file (`run-<id>.wandb`) back without any network.

The file is a LevelDB-style log: a 7-byte header (`:W&B` magic, version), then 32 KiB blocks of
records, each with a 7-byte header (crc32 `<I`, length `<H`, type `B`: 1 full, 2 first, 3 middle,
4 last); payloads are `wandb_internal_pb2.Record` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, List

from wandb.proto import wandb_internal_pb2

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_payloads(path: Path) -> List[bytes]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    payloads, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
            pending = b""
    return payloads


def read_run(run_file: Path) -> Dict[str, Any]:
    """`{"history": [row...], "summary": {...}, "config": {...}, "exit_code": int|None,
    "run": RunRecord, "metrics": [MetricRecord...]}` (`metrics`: the `define_metric` calls)."""
    out: Dict[str, Any] = {"history": [], "summary": {}, "config": {}, "exit_code": None,
                           "run": None, "metrics": []}
    for payload in read_payloads(run_file):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({item.key or "/".join(item.nested_key):
                                   json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "metric":
            out["metrics"].append(record.metric)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
        elif kind == "run":
            out["run"] = record.run
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
    return out


def find_run_file(run_dir: Path) -> Path:
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_dir}, found {files}"
    return files[0]
