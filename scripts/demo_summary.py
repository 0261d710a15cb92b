"""Print where a nightly run put its outputs, from the run record the DAG's publish task wrote.

python scripts/demo_summary.py OUTPUT_ROOT DS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(output_root: str, ds: str) -> int:
    record_path = Path(output_root, "runs", f"ds={ds}", "run.json")
    if not record_path.exists():
        print(f"no run record at {record_path}: the DAG run did not publish", file=sys.stderr)
        return 1
    record = json.loads(record_path.read_text())
    e = record["embeddings"]
    print(f"\nNightly run for ds={ds} published ({record['run_id']}, runner {record['runner']})")
    print(f"  input:       {record['input']}")
    print(f"  embeddings:  {e['dir']}  ({e['embedded']} embedded, {e['failed']} failed of {e['inputs']})")
    print(f"  failures:    {e['dir']}/failures-*.jsonl")
    for method, p in record["projections"].items():
        print(f"  {method:<5} map:   {p['map_png']}")
        print(f"  {method:<5} html:  {p['map_html']}")
        print(f"  {method:<5} rows:  {p['dir']}/projection-*.parquet ({p['rows']} rows)")
    print(f"  run record:  {record_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
