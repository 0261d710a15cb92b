"""docker-compose.yaml and Dockerfile: Docker cannot run here, so check what they say."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.conftest import ROOT

SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
}


def pins() -> dict[str, str]:
    out = {}
    for line in Path(ROOT, "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[name.strip().lower()] = version.strip()
    return out


def test_compose_parses_with_the_official_services():
    compose = yaml.safe_load(Path(ROOT, "docker-compose.yaml").read_text())
    assert set(compose["services"]) == SERVICES
    commands = {name: svc.get("command") for name, svc in compose["services"].items()}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-worker"] == "celery worker"
    for name in SERVICES - {"postgres", "redis"}:
        svc = compose["services"][name]
        assert svc["build"] == "."
        mounts = {v.split(":")[1] for v in svc["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/data"} <= mounts
        assert "postgresql" in svc["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_image_versions_match_requirements():
    locked = pins()
    dockerfile = Path(ROOT, "Dockerfile").read_text()
    base = re.search(r"^FROM apache/airflow:(\S+)-python(\S+)$", dockerfile, re.M)
    assert base, "Dockerfile must extend the official apache/airflow image"
    assert base.group(1) == locked["apache-airflow"]
    assert base.group(2) == "3.11"
    assert "pip install --no-cache-dir -r /opt/image-embeddings/requirements.txt" in dockerfile
    compose = yaml.safe_load(Path(ROOT, "docker-compose.yaml").read_text())
    assert compose["services"]["airflow-scheduler"]["image"].endswith(":" + locked["apache-airflow"])
    for package in ("apache-beam", "apache-airflow-providers-apache-beam", "apache-airflow-providers-google"):
        assert package in locked


def test_image_names_the_setup_file_dataflow_workers_install_from():
    """The image installs the project into site-packages (no setup.py there): the DAG's default comes from here."""
    from beam_jobs.nightly.plan import SETUP_FILE_ENV

    dockerfile = Path(ROOT, "Dockerfile").read_text()
    setting = re.search(rf"{SETUP_FILE_ENV}=(\S+)", dockerfile)
    assert setting, f"Dockerfile must set {SETUP_FILE_ENV}"
    copied = re.search(r"^COPY .*\bsetup\.py (\S+)$", dockerfile, re.M)
    assert copied, "Dockerfile must copy setup.py into the image"
    assert setting.group(1) == copied.group(1).rstrip("/") + "/setup.py"


DOCKER_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined; fails on anything else."""
    out, pending = [], ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending += " " + stripped.rstrip("\\").strip() if pending else stripped.rstrip("\\").strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, args = pending.partition(" ")
        assert keyword in DOCKER_INSTRUCTIONS, f"{path.name}:{number}: unknown instruction {keyword!r}"
        assert args.strip(), f"{path.name}:{number}: {keyword} without arguments"
        out.append((keyword, args.strip()))
        pending = ""
    assert not pending, f"{path.name}: ends inside a continued line"
    return out


def test_worker_image_is_beams_sdk_image_of_the_locked_versions_with_this_package():
    """What Dataflow workers run (--sdk_container_image): the lock's Beam and Python, the jobs installed."""
    import tomllib

    path = Path(ROOT, "worker.Dockerfile")
    steps = dockerfile_instructions(path)
    assert steps[0][0] == "FROM"
    locked = pins()
    python = re.search(
        r">=(\d+\.\d+)", tomllib.loads(Path(ROOT, "pyproject.toml").read_text())["project"]["requires-python"]
    )
    assert steps[0][1] == f"apache/beam_python{python.group(1)}_sdk:{locked['apache-beam']}"
    copied = [args.split()[:-1] for keyword, args in steps if keyword == "COPY"]
    for sources in copied:
        for source in sources:
            assert Path(ROOT, source).exists(), f"worker.Dockerfile copies {source}, which is not in the repo"
    assert ["beam_jobs"] in copied
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    # The package's dependencies at the lock's versions, and nothing left broken.
    assert "pip install --no-cache-dir --constraint requirements.txt ." in runs
    assert "pip check" in runs
    assert all(keyword != "ENTRYPOINT" for keyword, _ in steps), "the SDK image's boot entrypoint must stay"
    for package in ("apache-beam", "tensorflow", "openvino"):
        assert package in locked


def test_compose_takes_its_secrets_from_the_environment():
    """Fernet key, admin login and database password: from the environment (.env), laptop values only as
    fallbacks, and the README says how to set them for anything else."""
    text = Path(ROOT, "docker-compose.yaml").read_text()
    compose = yaml.safe_load(text)
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__FERNET_KEY"] == "${AIRFLOW_FERNET_KEY:-}"
    assert "${POSTGRES_PASSWORD:-airflow}@postgres" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-airflow}"
    init = compose["services"]["airflow-init"]["environment"]
    assert init["_AIRFLOW_WWW_USER_PASSWORD"] == "${AIRFLOW_ADMIN_PASSWORD:-airflow}"
    assert env["IMAGE_EMBEDDINGS_ALLOWED_ROOTS"] == "${IMAGE_EMBEDDINGS_ALLOWED_ROOTS:-/opt/airflow/data}"
    # No password written out anywhere but as a fallback of a variable.
    assert not re.search(r"airflow:airflow@|PASSWORD: airflow\b|FERNET_KEY: ''", text)
    readme = Path(ROOT, "README.md").read_text()
    for name in ("AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "Fernet.generate_key()"):
        assert name in readme
