"""Deterministic sample images made from real photos shipped inside PyPI packages.

    python -m devtools.samples --out data/images/ds=2026-11-20 --n 40 [--seed 0] [--edge_cases]

Sources are the photographs that scikit-learn (``load_sample_images``),
scikit-image (``skimage.data``) and matplotlib (sample data) install with
themselves, so nothing is downloaded. Each output image is a seeded random
crop of one source, scaled to a log-uniform size between ``min_mp`` and
``max_mp`` megapixels, sometimes flipped or made grayscale, saved as JPEG
(quality 70-95) or PNG. The same (n, seed, sizes) always gives the same files.

``write_edge_cases`` adds the awkward files a real bucket holds: empty,
truncated, text named .jpg, a decompression bomb, CMYK, 16-bit, palette with
transparency and an EXIF-rotated photo, and returns what each should become.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import struct
import zlib
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np
from PIL import Image

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "brick.png",
    "gravel.png",
    "grass.png",
    "moon.png",
    "page.png",
    "horse.png",
)


def source_photo_paths() -> list[str]:
    """Real photos shipped by installed packages, in a fixed order."""
    paths: list[str] = []
    sk = resources.files("sklearn.datasets") / "images"
    paths += [str(sk / name) for name in ("china.jpg", "flower.jpg")]
    try:
        ski = resources.files("skimage.data")
        paths += [str(ski / name) for name in SKIMAGE_PHOTOS if (ski / name).is_file()]
    except ModuleNotFoundError:
        pass
    import matplotlib

    mpl = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if os.path.exists(mpl):
        paths.append(mpl)
    existing = [p for p in paths if os.path.exists(p)]
    if len(existing) < 2:
        raise RuntimeError("no sample photos found: install scikit-learn, scikit-image and matplotlib")
    return existing


def load_sources() -> list[Image.Image]:
    out = []
    for path in source_photo_paths():
        with Image.open(path) as img:
            out.append(img.convert("RGB"))
    return out


@dataclass(frozen=True)
class SampleSpec:
    n: int
    seed: int = 0
    min_mp: float = 0.3
    max_mp: float = 3.0
    gray_fraction: float = 0.1
    png_fraction: float = 0.15


def _make_one(src: Image.Image, rng: np.random.Generator, spec: SampleSpec) -> tuple[Image.Image, str, int]:
    w, h = src.size
    area_frac = rng.uniform(0.4, 1.0)
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.8)))
    cw = int(min(w, round(math.sqrt(area_frac * w * h * aspect))))
    ch = int(min(h, round(math.sqrt(area_frac * w * h / aspect))))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    crop = src.crop((left, top, left + cw, top + ch))
    mp = math.exp(rng.uniform(math.log(spec.min_mp), math.log(spec.max_mp)))
    scale = math.sqrt(mp * 1e6 / (cw * ch))
    size = (max(32, round(cw * scale)), max(32, round(ch * scale)))
    img = crop.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < spec.gray_fraction:
        img = img.convert("L")
    # PNG for the smaller ones only: multi-megapixel PNGs are slow to write and rare in practice.
    fmt = "png" if (rng.random() < spec.png_fraction and size[0] * size[1] <= 1_000_000) else "jpg"
    quality = int(rng.integers(70, 96))
    return img, fmt, quality


def build_sample_images(out_dir: str, spec: SampleSpec) -> list[str]:
    """Write ``spec.n`` images into ``out_dir`` (reused when already built with the same spec)."""
    os.makedirs(out_dir, exist_ok=True)
    # The stamp sits beside the folder, not in it, so globs like 'dir/*' see only images.
    stamp = out_dir.rstrip("/") + ".samples.json"
    wanted = asdict(spec)
    if os.path.exists(stamp):
        with open(stamp) as handle:
            done = json.load(handle)
        if done.get("spec") == wanted and all(os.path.exists(os.path.join(out_dir, f)) for f in done["files"]):
            return [os.path.join(out_dir, f) for f in done["files"]]
    sources = load_sources()
    rng = np.random.default_rng(spec.seed)
    files = []
    for i in range(spec.n):
        src = sources[int(rng.integers(0, len(sources)))]
        img, fmt, quality = _make_one(src, rng, spec)
        name = f"img_{i:05d}.{fmt}"
        path = os.path.join(out_dir, name)
        if fmt == "jpg":
            img.save(path, "JPEG", quality=quality)
        else:
            img.save(path, "PNG", compress_level=1)
        files.append(name)
    with open(stamp, "w") as handle:
        json.dump({"spec": wanted, "files": files}, handle)
    return [os.path.join(out_dir, f) for f in files]


# --------------------------------------------------------------------------- edge cases


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def bomb_png_bytes(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of width*height pixels that is only a few KB on disk."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# Expected outcome per file: "ok" or "<stage>/<reason>" as in failure records.
EDGE_CASES = {
    "zero_byte.jpg": "decode/empty_file",
    "truncated.jpg": "decode/truncated",
    "text_named.jpg": "decode/not_an_image",
    "bomb.png": "decode/too_many_pixels",
    "cmyk.jpg": "ok",
    "gray16.png": "ok",
    "palette_alpha.png": "ok",
    "exif_rotated.jpg": "ok",
}


def write_edge_cases(out_dir: str) -> dict[str, str]:
    """Write the awkward files; returns {path: expected outcome}."""
    os.makedirs(out_dir, exist_ok=True)
    photo = load_sources()[0]  # china.jpg, 640x427
    files: dict[str, bytes] = {
        "zero_byte.jpg": b"",
        "truncated.jpg": _jpeg_bytes(photo, quality=90)[:20_000],
        "text_named.jpg": b"this is a text file that someone named .jpg\n" * 20,
        "bomb.png": bomb_png_bytes(),
        "cmyk.jpg": _jpeg_bytes(photo.convert("CMYK"), quality=90),
    }
    gray = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16)).save(buf, "PNG")  # mode I;16
    files["gray16.png"] = buf.getvalue()
    pal = photo.resize((320, 213)).quantize(64)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    files["palette_alpha.png"] = buf.getvalue()
    # Stored landscape, displayed portrait (orientation 6 = rotate 90 CW).
    exif = Image.Exif()
    exif[0x0112] = 6
    files["exif_rotated.jpg"] = _jpeg_bytes(photo, quality=90, exif=exif.tobytes())
    out = {}
    for name, data in files.items():
        path = os.path.join(out_dir, name)
        with open(path, "wb") as handle:
            handle.write(data)
        out[path] = EDGE_CASES[name]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.samples", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min_mp", type=float, default=0.3)
    parser.add_argument("--max_mp", type=float, default=3.0)
    parser.add_argument("--edge_cases", action="store_true", help="also write the awkward files")
    args = parser.parse_args(argv)
    if args.n < 1 or not 0 < args.min_mp <= args.max_mp:
        parser.error("need --n >= 1 and 0 < --min_mp <= --max_mp")
    files = build_sample_images(args.out, SampleSpec(args.n, args.seed, args.min_mp, args.max_mp))
    print(f"{len(files)} sample images in {args.out}")
    if args.edge_cases:
        edge = write_edge_cases(args.out)
        print(f"{len(edge)} edge-case files in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
