"""Where a benchmark's report goes: `<stem>.json` and `<stem>.png` side by side in one folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_report_files(report: dict, output_dir: str | Path, stem: str,
                       plot: Callable[[dict, Path], None]) -> tuple[Path, Path]:
    """Write `report` as indented JSON and `plot(report, png_path)`; returns (json_path, png_path)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = output_dir / f"{stem}.json", output_dir / f"{stem}.png"
    json_path.write_text(json.dumps(report, indent=2))
    plot(report, png_path)
    return json_path, png_path
