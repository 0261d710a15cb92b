"""Airflow-side helpers of the image embeddings pipeline (imported by dags/ at parse time: keep light).

Airflow puts the plugins folder on sys.path for the dag-processor, scheduler,
workers and triggerer, so DAG files import this package as
``image_embeddings_airflow``. Nothing here imports TensorFlow, Beam or numpy
at module level.
"""

# Names the DAG file and the UI share (the DAG's decisions live in beam_jobs.nightly).
DAG_ID = "image_embeddings"
# The Asset the publish task emits one event on per published run (the maps page reads them).
MAPS_ASSET = "image_embeddings_maps"
PUBLISH_TASK = "publish"
