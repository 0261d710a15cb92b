# Airflow 3.3 with this project's pinned environment: Beam, TensorFlow, the Beam and Google providers,
# and the beam_jobs package itself (the DAG launches `python -m beam_jobs.<job>` with this interpreter).
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.txt /opt/image-embeddings/requirements.txt
# The lock pins apache-airflow to the image's own version, so pip keeps the image's Airflow.
RUN pip install --no-cache-dir -r /opt/image-embeddings/requirements.txt

COPY --chown=airflow:root pyproject.toml setup.py /opt/image-embeddings/
COPY --chown=airflow:root beam_jobs /opt/image-embeddings/beam_jobs
RUN pip install --no-cache-dir --no-deps /opt/image-embeddings

# The install above puts beam_jobs in site-packages, where no setup.py exists: Dataflow workers
# install the jobs from this one (Beam's --setup_file; the DAG's default for DataflowRunner).
ENV TF_CPP_MIN_LOG_LEVEL=2 \
    IMAGE_EMBEDDINGS_DATA=/opt/airflow/data \
    IMAGE_EMBEDDINGS_SETUP_FILE=/opt/image-embeddings/setup.py
