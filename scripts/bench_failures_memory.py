"""Peak memory of the extraction job against the number of failing inputs.

    python scripts/bench_failures_memory.py [--counts 2000 200000]

Each input is a tiny file that is not an image, so every one becomes a failure record.
The job runs as a subprocess (its own peak RSS, FnApiRunner defaults); the issue's bar
is peak RSS at 200k failures within 10% of 2k failures.

Beside each job, the same inputs go through the job's listing stage alone (ReadImageURIs and
a count, the jobs' runner options, a subprocess): what the inputs cost before any is decoded or
fails. The job's growth minus the listing's is what the failures themselves add.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.benchutil import cpu_flags, extraction_command, run_measured  # noqa: E402
from scripts.stress_accounting import write_files  # noqa: E402

LISTING_ONLY = """
import sys
import tempfile

import apache_beam as beam
from beam_jobs.extract_embeddings.inputs import ReadImageURIs, write_listing
from beam_jobs.runtime import pipeline_options
with tempfile.TemporaryDirectory() as folder:
    # As the job lists a local glob: a snapshot before the run, ranges of it through the shuffle.
    listing = write_listing(sys.argv[1], folder + "/listing.jsonl")
    with beam.Pipeline(options=pipeline_options(["--runner=FnApiRunner"])) as p:
        _ = (p | ReadImageURIs(sys.argv[1], listing=listing))["uris"] | beam.combiners.Count.Globally()
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[2_000, 200_000])
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}", flush=True)
    rows = []
    work = tempfile.mkdtemp(prefix="bench-failures-")
    try:
        for count in args.counts:
            folder = os.path.join(work, f"inputs-{count}")
            write_files(folder, count)
            out = os.path.join(work, f"out-{count}", "ds=2026-11-20")
            cmd = extraction_command(os.path.join(folder, "*"), out, f"bench-{count}")
            wall, rss_mb, _ = run_measured(cmd, ROOT)
            with open(os.path.join(out, "manifest.json")) as handle:
                manifest = json.load(handle)
            _, listing_mb, _ = run_measured([sys.executable, "-c", LISTING_ONLY, os.path.join(folder, "*")], ROOT)
            rows.append((count, manifest["failed"], wall, rss_mb, listing_mb))
            print(
                f"{count} inputs: {manifest['failed']} failed, {wall:.1f}s, peak RSS {rss_mb:.0f} MB "
                f"(listing stage alone: {listing_mb:.0f} MB)",
                flush=True,
            )
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        "\n| inputs (all failing) | failure records | wall s | peak RSS MB | listing stage alone MB |"
        "\n|---:|---:|---:|---:|---:|"
    )
    for count, failed, wall, rss, listing in rows:
        print(f"| {count:,} | {failed:,} | {wall:.1f} | {rss:.0f} | {listing:.0f} |")
    if len(rows) > 1:
        (n0, _, _, job0, list0), (n1, _, _, job1, list1) = rows[0], rows[-1]
        print(f"peak RSS, {n1:,} against {n0:,}: {job1 / job0 - 1:+.1%} ({job1 - job0:+.0f} MB)")
        print(f"of which the listing stage alone (inputs, before any failure): {list1 - list0:+.0f} MB")
        print(f"what the failures add beyond their inputs: {(job1 - job0) - (list1 - list0):+.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
