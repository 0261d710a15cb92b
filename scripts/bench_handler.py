"""Why the extraction job has its own RunInference handler: the call it makes against the stock one's.

    python scripts/bench_handler.py [--batches 8] [--batch 32]

Same ResNet50 (seeded random weights: same compute as ImageNet's), same uint8
pixels from real photos, in one process, alternating rounds so load drifts hit
both alike:

  eager    what Beam's TFModelHandlerNumpy does per batch: ``model(np.stack(batch))``
           on float input preprocessed outside the model
  compiled what ours does: one ``tf.function`` traced once for uint8 [None, 224, 224, 3],
           ``preprocess_input`` inside the graph

Prints images/s for each, their ratio and the CPU flags that matter.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.benchutil import cpu_flags  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import keras

    from beam_jobs.extract_embeddings.engines import EngineChoice
    from beam_jobs.extract_embeddings.images import decode_and_resize
    from beam_jobs.extract_embeddings.inference import load_embedding_model
    from beam_jobs.extract_embeddings.models import get_spec, resolve_weights
    from devtools.samples import load_sources

    spec = get_spec("resnet50")
    weights = resolve_weights(spec, "random", seed=0)
    ours = load_embedding_model("resnet50", weights, EngineChoice("tf"))
    eager_model = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3))
    preprocess = keras.applications.resnet50.preprocess_input

    photos = []
    for img in load_sources():
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        photos.append(decode_and_resize(buf.getvalue()).pixels)
    n = args.batch
    batches = [np.stack([photos[(b * n + i) % len(photos)] for i in range(n)]) for b in range(args.batches)]

    def eager(batch: np.ndarray) -> np.ndarray:
        return np.asarray(eager_model(preprocess(batch.astype(np.float32)), training=False))

    def compiled(batch: np.ndarray) -> np.ndarray:
        return ours(batch)

    for fn in (eager, compiled):
        fn(batches[0])  # warm-up at the real shape
    totals = {"eager": 0.0, "compiled": 0.0}
    for _ in range(args.rounds):
        for name, fn in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            for batch in batches:
                fn(batch)
            totals[name] += time.perf_counter() - start
    images = args.rounds * args.batches * n
    rates = {name: images / seconds for name, seconds in totals.items()}
    print(f"CPU: {cpu_flags()}")
    print(f"ResNet50 pooled, batch {n}, {images} images per engine, {args.rounds} alternating rounds")
    print("| call | images/s |\n|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} |")
    print(f"compiled / eager: {rates['compiled'] / rates['eager']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
