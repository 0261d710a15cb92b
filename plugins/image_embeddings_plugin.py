"""Registers the "Embedding maps" page with Airflow 3's UI (external view backed by a FastAPI app).

The helpers live in the ``image_embeddings_airflow`` package next to this file;
``plugins/.airflowignore`` keeps Airflow's plugin scan out of it, because the
scan imports every .py file under its bare file name ("runs", "paths", ...).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from image_embeddings_airflow.ui import create_app


class ImageEmbeddingsPlugin(AirflowPlugin):
    name = "image_embeddings"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/image-embeddings", "name": "Image embedding maps"}]
    external_views = [
        {
            "name": "Embedding maps",
            # Relative to the UI's base URL, so it also works behind a proxy path.
            "href": "image-embeddings/",
            "destination": "nav",
            "category": "browse",
            "url_route": "embedding-maps",
        },
    ]
