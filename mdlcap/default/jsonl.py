"""JSON Lines, the one file format of the default data: one sorted-key JSON object a line."""
from __future__ import annotations

import json
from pathlib import Path

from mdlcap import files


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write `rows` atomically (see mdlcap.files)."""
    files.atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
