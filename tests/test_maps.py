"""beam_jobs.reduce_dim.maps: map.html from its package template, thumbnails, map.png."""

from __future__ import annotations

import base64
import io
import json
import re
from importlib import resources

import numpy as np
from PIL import Image

from beam_jobs.reduce_dim.maps import (
    MAP_TEMPLATE,
    MapLabels,
    html_template,
    render_html,
    render_png,
    thumbnail_data_uri,
)

LABELS = MapLabels(
    title="PCA <map> & co", subtitle="2026-11-20 · model m", x_label="PC1", y_label="PC2", footer="run r"
)


def png_bytes(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_template_ships_as_package_data():
    assert resources.files("beam_jobs.reduce_dim").joinpath(MAP_TEMPLATE).is_file()
    for placeholder in ("__TITLE__", "__SUBTITLE__", "__NOTE__", "__DATA__"):
        assert placeholder in html_template()


def test_render_html_fills_every_placeholder_and_keeps_the_script_closed():
    uris = ["/a.jpg", "/b</script><script>alert(1)</script>.jpg", "/c.jpg"]
    page = render_html(
        np.array([0.0, 1.0, 2.0]), np.array([1.0, 0.5, 0.0]), ["d1", "d2", "d1"], uris, [None, None, None], LABELS, "n"
    )
    assert not re.search(r"__(TITLE|SUBTITLE|NOTE|DATA)__", page)
    assert "<title>PCA &lt;map&gt; &amp; co</title>" in page
    assert page.count("</script>") == 1  # "</" inside the data is escaped
    data = json.loads(re.search(r"const DATA = (.*);\n", page).group(1))
    assert data["groups"] == ["d1", "d2"]
    assert data["group_counts"] == [2, 1]
    assert [p[3] for p in data["points"]] == uris
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page


def test_thumbnail_composites_transparency_over_white_like_extraction():
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))
    thumb = decoded(thumbnail_data_uri(png_bytes(rgba), size=16))
    assert max(thumb.size) == 16
    left, right = thumb.convert("RGB").getpixel((2, 5)), thumb.convert("RGB").getpixel((13, 5))
    assert left[2] > 200
    assert left[0] < 60
    assert min(right) > 230  # transparent red becomes white, not red or black


def test_thumbnail_rescales_16_bit_images():
    gray = Image.fromarray(np.full((20, 20), 8000, np.uint16))  # about 12% of the 16-bit range
    assert gray.mode.startswith("I;16")
    value = decoded(thumbnail_data_uri(png_bytes(gray), size=16)).convert("L").getpixel((8, 8))
    assert 20 < value < 40  # rescaled like the extraction job (clipping would give white)


def test_thumbnail_is_none_for_what_cannot_be_shown():
    assert thumbnail_data_uri(b"not an image") is None
    assert thumbnail_data_uri(png_bytes(Image.new("RGB", (100, 100))), max_pixels=99 * 99) is None


def test_render_png_is_a_picture():
    rng = np.random.default_rng(0)
    groups = np.array([f"2026-11-{i % 25 + 1:02d}" for i in range(300)], dtype=object)  # > 20: a colour bar
    png = render_png(rng.normal(size=300), rng.normal(size=300), groups, LABELS)
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG"
        assert img.size[0] >= 1000
