"""Print where a nightly run put its outputs, from the run record the DAG's publish task wrote.

python scripts/demo_summary.py OUTPUT_ROOT DS
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from beam_jobs.contract import FAILURE_FILES, PROJECTION_FILES, RunRecord, run_record_path, store_dir


def main(output_root: str, ds: str) -> int:
    record_path = Path(run_record_path(output_root, ds))
    if not record_path.exists():
        print(f"no run record at {record_path}: the DAG run did not publish", file=sys.stderr)
        return 1
    record: RunRecord = json.loads(record_path.read_text())
    embeddings = record["embeddings"]
    print(f"\nNightly run for ds={ds} published ({record['run_id']}, runner {record['runner']})")
    print(f"  input:       {record['input']}")
    print(
        f"  embeddings:  {embeddings['dir']}  ({embeddings['embedded']} embedded, "
        f"{embeddings['failed']} failed of {embeddings['inputs']})"
    )
    print(f"  failures:    {embeddings['dir']}/{FAILURE_FILES}")
    if embeddings.get("engines"):
        print(f"  engine:      {', '.join(embeddings['engines'])} ({embeddings['images_per_second']} images/s)")
    for method, projection in record["projections"].items():
        print(f"  {method:<5} map:   {projection['map_png']}")
        print(f"  {method:<5} html:  {projection['map_html']}")
        if projection.get("map_mosaic"):
            print(f"  {method:<5} mosaic: {projection['map_mosaic']}")
        print(f"  {method:<5} rows:  {projection['dir']}/{PROJECTION_FILES} ({projection['rows']} rows)")
    for name, model in (record.get("models") or {}).items():
        if len(record["models"]) < 2 or model["model_id"] == record.get("model_id"):
            continue  # one model, or the first one: its maps are the ones above
        for method, projection in model["projections"].items():
            print(f"  {name} {method} map: {projection['map_html']}")
    if record.get("comparison"):
        print(f"  comparison:  {record['comparison']['comparison_json']}")
        for pair in record["comparison"]["pairs"]:
            figures = ", ".join(f"{k} {v}" for k, v in pair.items() if k not in ("models", "images"))
            print(f"    {' vs '.join(pair['models'])}: {figures}")
    store = store_dir(output_root)
    if os.path.isdir(store):  # param store lance (the demo sets it)
        import lancedb

        db = lancedb.connect(store)
        for name in sorted(db.list_tables().tables):
            rows = db.open_table(name).count_rows(f"ds = '{ds}'")
            print(f"  store:       {store} table {name} ({rows} rows of ds={ds})")
        print(f"  search it:   python -m beam_jobs.search --store lance --store_uri {store} --uri <an image URI>")
    print(f"  run record:  {record_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
