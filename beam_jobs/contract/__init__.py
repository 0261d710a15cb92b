"""What the Beam jobs and the Airflow side both rely on, declared once: standard library only.

The DAG, the Airflow plugin (maps page, metrics, run record) and the jobs import
this module. It must stay importable at DAG-parse time without numpy, Pillow,
TensorFlow or Beam (``tests/test_contract.py`` checks that in a fresh interpreter).

Everything is read through this package (``from beam_jobs.contract import X``); its modules group it:

* ``layout``: the output layout: partition folders, file names and globs;
* ``vocabulary``: reduction methods, models, runners, weights keywords,
  batch and pixel limits, Beam metric namespaces;
* ``records``: the records that cross the boundary, as ``TypedDict``s: the job
  manifests (``manifest.json``), a failure record, and the run record
  (``run.json`` and the maps Asset event);
* ``report``: the morning report's files and ``report.json``.
"""

from beam_jobs.contract.layout import *  # noqa: F403
from beam_jobs.contract.records import *  # noqa: F403
from beam_jobs.contract.report import *  # noqa: F403
from beam_jobs.contract.vocabulary import *  # noqa: F403
