"""Airflow-side helpers of the image embeddings pipeline (imported by dags/ at parse time: keep light).

Airflow puts the plugins folder on sys.path for the dag-processor, scheduler,
workers and triggerer, so DAG files import this package as
``image_embeddings_airflow``. Nothing here imports TensorFlow, Beam or numpy
at module level.
"""
