# Dataflow worker image: Beam's SDK image for the pinned Beam and Python versions, plus this
# project's jobs and their dependencies at the lock's versions, so workers run exactly what the
# launcher ran (no pip install at worker start-up, unlike --setup_file).
#
#   docker build -f worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/images/embeddings-worker:TAG .
#   docker push REGION-docker.pkg.dev/PROJECT/images/embeddings-worker:TAG
#
# Then give that reference to the DAG (param or Variable 'image_embeddings_sdk_container_image')
# or to a job (--sdk_container_image). tests/test_deployment.py checks the base tag against the lock.
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/image-embeddings
COPY requirements.txt pyproject.toml setup.py README.md ./
COPY beam_jobs ./beam_jobs
# Only the package's own dependencies (not Airflow, which the lock also pins), each at the lock's
# version: the constraint file makes pip take the very versions the launcher resolved. The [kfp]
# extra lets the same image run the Kubeflow pipeline's steps (pipelines/image_embeddings_kfp.py).
RUN pip install --no-cache-dir --constraint requirements.txt .[kfp] \
    && pip check

# Workers never report OpenVINO usage (the jobs also decline it at run time when no choice exists).
RUN opt_in_out --opt_out || true
ENV TF_CPP_MIN_LOG_LEVEL=2

# The SDK image's own entrypoint (/opt/apache/beam/boot) starts the worker harness: keep it.
