"""Registers the "Embedding maps" page with Airflow 3's UI (external view backed by a FastAPI app).

The helpers live in the ``image_embeddings_airflow`` package next to this file;
``plugins/.airflowignore`` keeps Airflow's plugin scan out of it, because the
scan imports every .py file under its bare file name ("runs", "paths", ...).
"""

from __future__ import annotations

from functools import cached_property

from airflow.plugins_manager import AirflowPlugin


class ImageEmbeddingsPlugin(AirflowPlugin):
    name = "image_embeddings"
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

    @cached_property
    def fastapi_apps(self) -> list[dict]:
        # Built on first use (only the api-server asks): every component loads plugins, and
        # importing the API server's auth pieces would add ~0.8 s to each task start.
        from image_embeddings_airflow.ui import create_app

        return [{"app": create_app(), "url_prefix": "/image-embeddings", "name": "Image embedding maps"}]
