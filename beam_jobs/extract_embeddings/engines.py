"""Inference engines for one and the same Keras graph, chosen for the CPU a worker lands on.

Every engine starts from the job's own compiled ``tf.function`` (uint8 pixels in,
``preprocess_input`` and the pooled Keras model inside): ``tf`` calls it, ``openvino``
converts that very graph with ``openvino.convert_model`` (no second model definition)
and runs it with as many asynchronous infer requests as OpenVINO finds optimal, so
every core is busy on one batch. Adding an engine is one loader function in
``LOADERS`` (``(embed_fn, spec, choice) -> EngineModel``) and its name in
``beam_jobs.contract.ENGINES``.

How ``auto`` decides, on the worker (the launcher's CPU may differ from the workers'):

1. OpenVINO when it imports and converts the graph, else TensorFlow;
2. precision bf16 when OpenVINO reports BF16 in the CPU's optimisation capabilities
   (AVX512_BF16, AMX), f32 otherwise;
3. the accuracy guard: the engine embeds a fixed probe batch and every vector's cosine to
   TensorFlow's f32 one must be >= ``GUARD_MIN_COSINE``. ``auto`` falls back (bf16 -> f32
   -> tf) when it does not hold; an engine or precision forced by flag fails the load
   instead, so vectors that are not interchangeable never carry the same model_id.

What ran is described by ``EngineModel.info`` (engine, precision, the guard's cosine, the
CPU features that decided), which the job records in its manifest.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_jobs.contract import (
    ENGINE_AUTO,
    ENGINE_OPENVINO,
    ENGINE_TF,
    GUARD_MIN_COSINE,
    PRECISION_AUTO,
    PRECISION_BF16,
    PRECISION_F32,
    ModelSpec,
)

LOG = logging.getLogger(__name__)

# The CPU features that decide an engine's speed and precision (Linux /proc/cpuinfo names).
RELEVANT_CPU_FLAGS = (
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_features() -> list[str]:
    """The relevant flags of this machine's CPU, in a fixed order (empty where /proc is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in RELEVANT_CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    """The CPU's model name (for benchmark headers), "unknown" where /proc is absent."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


@dataclass(frozen=True)
class EngineChoice:
    """What the flags ask for; ``auto`` values are decided on the worker."""

    engine: str = ENGINE_AUTO
    precision: str = PRECISION_AUTO
    threads: int = 0  # engine threads per process; 0 = the engine's default (all cores)


class EngineError(RuntimeError):
    """The requested engine cannot run this model here, or fails the accuracy guard."""


class EngineModel:
    """A batch function ``uint8 [N, H, W, 3] -> float32 [N, D]`` plus a description of what runs it.

    An engine other than TensorFlow is checked twice: on the probe batch when it loads, and on
    the first real batch it embeds, against TensorFlow f32 on the same pixels (a fixed probe
    cannot stand for every night's content). ``reference`` is that TensorFlow call; it is
    dropped once the first batch passed. If it does not pass, ``fallback`` decides: True
    (``auto``) runs TensorFlow from then on, False (a forced engine) refuses every batch, so
    the night's vectors are all interchangeable or visibly failed, never a mix.
    """

    def __init__(
        self,
        call: Callable[[np.ndarray], np.ndarray],
        info: dict[str, Any],
        reference: Callable[[np.ndarray], np.ndarray] | None = None,
        fallback: bool = False,
    ):
        self._call = call
        self.info = info
        self._reference = reference
        self._fallback = fallback
        self._refused: str | None = None
        self._lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self._reference is not None:
            with self._lock:
                if self._reference is not None:
                    return self._first_batch(pixels)
        if self._refused:
            raise EngineError(self._refused)
        return self._call(pixels)

    def _first_batch(self, pixels: np.ndarray) -> np.ndarray:
        # Called under the lock; ``_reference`` is cleared only once the decision is made, so a
        # second thread waits for it instead of running unchecked batches beside it.
        reference = self._reference
        try:
            return self._decide(pixels, reference)
        finally:
            self._reference = None

    def _decide(self, pixels: np.ndarray, reference: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        got = self._call(pixels)
        expected = reference(pixels)
        cosine = min_cosine(got, expected)
        self.info["first_batch_min_cosine"] = round(cosine, 6)
        if cosine >= GUARD_MIN_COSINE:
            return got
        problem = (
            f"{self.info['engine']} {self.info['precision']} failed the accuracy guard on the first real batch: "
            f"min cosine to TensorFlow f32 {cosine:.6f} < {GUARD_MIN_COSINE}"
        )
        if not self._fallback:
            self._refused = problem + " (forced engine: every batch refused; use --engine auto or tf)"
            raise EngineError(self._refused)
        LOG.warning("engine auto: %s; TensorFlow f32 runs from now on", problem)
        self.info.update(
            engine=ENGINE_TF,
            precision=PRECISION_F32,
            fallbacks=[*self.info.get("fallbacks", []), problem],
        )
        self._call = reference
        return expected


def probe_batch(input_size: tuple[int, int], count: int = 4) -> np.ndarray:
    """A fixed, image-like batch for the guard: gradients, edges and texture, no randomness across hosts."""
    w, h = input_size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for k in range(count):
        r = (xx / w) * 255
        g = (yy / h) * 255
        b = 127.5 + 127.5 * np.sin((xx + yy) / (6.0 + 5 * k))
        checker = ((xx // (16 + 8 * k) + yy // (16 + 8 * k)) % 2) * 60
        rgb = np.stack([r, g, b], axis=-1) * (0.6 + 0.1 * k) + checker[..., None]
        images.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(images)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two zero vectors agree; one zero vector against a non-zero one does not.
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(np.abs(a).sum(1) == np.abs(b).sum(1), 1.0, 0.0))
    return float(cos.min())


# --------------------------------------------------------------------------- TensorFlow


def tf_call(embed_fn: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda pixels: embed_fn(pixels).numpy()


def load_tf(embed_fn: Any, spec: ModelSpec, choice: EngineChoice) -> EngineModel:
    if choice.precision not in (PRECISION_AUTO, PRECISION_F32):
        raise EngineError(f"--engine tf runs f32 only, not --precision {choice.precision}")
    return EngineModel(tf_call(embed_fn), {"engine": ENGINE_TF, "precision": PRECISION_F32})


# --------------------------------------------------------------------------- OpenVINO


def openvino_capabilities(core: Any) -> list[str]:
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def openvino_precision(requested: str, capabilities: list[str]) -> str:
    """bf16 where the CPU computes it natively (OpenVINO lists BF16), else f32; a forced bf16 needs BF16."""
    if requested == PRECISION_AUTO:
        return PRECISION_BF16 if "BF16" in capabilities else PRECISION_F32
    if requested == PRECISION_BF16 and "BF16" not in capabilities:
        raise EngineError(
            f"--precision bf16: this CPU has no native bf16 (OpenVINO capabilities: {', '.join(capabilities)}); "
            "use --precision auto or f32"
        )
    return requested


class _Call:
    """One caller's batch in flight: its chunks' outputs, and a semaphore released as each comes back."""

    def __init__(self, chunks: int):
        self.out: list[np.ndarray | None] = [None] * chunks
        self.done = threading.Semaphore(0)


class OpenVINOBatch:
    """One batch split over the compiled model's optimal number of async infer requests.

    The requests are a pool shared by every Beam thread of the process (RunInference shares the
    model per process): a chunk waits for a free request, so no more inferences run at once than
    OpenVINO's optimum (no oversubscription), and a request that finishes its chunk early takes
    the next chunk, of this batch or another thread's, instead of idling until the slowest chunk
    of the batch is done (a stream slowed by a decoding thread on its core holds back the whole
    batch otherwise).
    """

    def __init__(self, compiled: Any, requests: int):
        self._slots = [compiled.create_infer_request() for _ in range(requests)]
        self._owner: list[tuple[_Call, int] | None] = [None] * requests
        self._idle: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot, request in enumerate(self._slots):
            request.set_callback(self._done, slot)
            self._idle.put(slot)

    def _done(self, slot: int) -> None:
        # Runs on OpenVINO's thread when a request succeeded (a failed one never calls back).
        call, index = self._owner[slot]
        call.out[index] = self._slots[slot].get_output_tensor(0).data.copy()
        self._owner[slot] = None
        self._idle.put(slot)
        call.done.release()

    def _raise_failed(self, call: _Call) -> None:
        for slot, owner in enumerate(self._owner):
            if owner is not None and owner[0] is call:
                try:
                    self._slots[slot].wait_for(0)  # re-raises the request's error, if it failed
                except Exception:
                    self._owner[slot] = None
                    self._idle.put(slot)
                    raise

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        chunks = np.array_split(pixels, min(len(self._slots), len(pixels)))
        call = _Call(len(chunks))
        for index, chunk in enumerate(chunks):
            slot = self._idle.get()
            self._owner[slot] = (call, index)
            try:
                self._slots[slot].start_async({0: np.ascontiguousarray(chunk)})
            except Exception:  # e.g. a shape the model does not take: the request goes back unused
                self._owner[slot] = None
                self._idle.put(slot)
                raise
        for _ in chunks:
            while not call.done.acquire(timeout=1.0):
                self._raise_failed(call)
        return np.concatenate(call.out).astype(np.float32, copy=False)


def decline_openvino_telemetry() -> None:
    """``openvino.convert_model`` reports usage to Google Analytics unless the machine opted out.

    Workers should not phone home (and without internet the attempt only costs time), so
    where no choice is recorded this records "no", as OpenVINO's ``opt_in_out --opt_out``
    does (~/intel/openvino_telemetry). An explicit earlier choice is left as it is.
    """
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return  # not installed: OpenVINO uses its no-op stub
    checker = OptInChecker()
    try:
        if checker.consent_file_base_dir() and not os.path.exists(checker.consent_file()):
            checker.update_result(ConsentCheckResult.DECLINED)
    except OSError as exc:  # a read-only home: telemetry then only fails to send
        LOG.debug("could not record the OpenVINO telemetry opt-out: %s", exc)


def _type_name(value: Any) -> str:
    """OpenVINO element types print as "<Type: 'float32'>"; their short name is "f32"."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def load_openvino(embed_fn: Any, spec: ModelSpec, choice: EngineChoice) -> EngineModel:
    try:
        import openvino as ov
    except ImportError as exc:
        raise EngineError(f"OpenVINO is not installed ({exc})") from exc
    decline_openvino_telemetry()
    core = ov.Core()
    capabilities = openvino_capabilities(core)
    precision = openvino_precision(choice.precision, capabilities)
    start = time.perf_counter()
    model = ov.convert_model(embed_fn.get_concrete_function())
    converted = time.perf_counter()
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "THROUGHPUT",
        "INFERENCE_PRECISION_HINT": precision,
    }
    if choice.threads:
        config["INFERENCE_NUM_THREADS"] = choice.threads
    compiled = core.compile_model(model, "CPU", config)
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    effective = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return EngineModel(
        OpenVINOBatch(compiled, requests),
        {
            "engine": ENGINE_OPENVINO,
            "precision": precision,
            "openvino_version": ov.__version__.split("-")[0],
            "openvino_precision": effective,
            "openvino_capabilities": capabilities,
            "infer_requests": requests,
            "convert_seconds": round(converted - start, 2),
            "compile_seconds": round(time.perf_counter() - converted, 2),
        },
    )


LOADERS: dict[str, Callable[[Any, ModelSpec, EngineChoice], EngineModel]] = {
    ENGINE_TF: load_tf,
    ENGINE_OPENVINO: load_openvino,
}
# What ``auto`` tries, fastest first; TensorFlow always runs.
AUTO_ORDER = (ENGINE_OPENVINO, ENGINE_TF)


def _guarded(loaded: EngineModel, reference: np.ndarray, probe: np.ndarray) -> EngineModel:
    """The probe check at load (the first real batch is checked again when it comes)."""
    cosine = min_cosine(loaded(probe), reference)
    loaded.info["guard_min_cosine"] = round(cosine, 6)
    if not cosine >= GUARD_MIN_COSINE:
        raise EngineError(
            f"{loaded.info['engine']} {loaded.info['precision']} failed the accuracy guard: "
            f"min cosine to TensorFlow f32 {cosine:.6f} < {GUARD_MIN_COSINE}"
        )
    return loaded


def _check_first_batch(loaded: EngineModel, embed_fn: Any, fallback: bool) -> EngineModel:
    if loaded.info["engine"] == ENGINE_TF:
        return loaded  # TensorFlow f32 is the reference itself
    return EngineModel(loaded._call, loaded.info, reference=tf_call(embed_fn), fallback=fallback)


def load_engine(embed_fn: Any, spec: ModelSpec, choice: EngineChoice) -> EngineModel:
    """The engine that runs ``embed_fn`` here: as forced by ``choice``, or the fastest that passes the guard."""
    if choice.engine != ENGINE_AUTO and choice.engine not in LOADERS:
        raise EngineError(f"unknown engine {choice.engine!r}; known: {', '.join(LOADERS)}")
    probe = probe_batch(spec.input_size)
    reference = embed_fn(probe).numpy()
    features = cpu_features()
    if choice.engine != ENGINE_AUTO:
        loaded = _guarded(LOADERS[choice.engine](embed_fn, spec, choice), reference, probe)
        loaded.info.update(chosen_by="flag", cpu_features=features)
        return _check_first_batch(loaded, embed_fn, fallback=False)
    tried: list[str] = []
    for engine in AUTO_ORDER:
        precisions = [choice.precision]
        if engine == ENGINE_OPENVINO and choice.precision == PRECISION_AUTO:
            # bf16 is decided from the CPU; f32 is the fallback when bf16 misses the guard.
            precisions.append(PRECISION_F32)
        for precision in precisions:
            try:
                attempt = EngineChoice(engine, precision, choice.threads)
                loaded = _guarded(LOADERS[engine](embed_fn, spec, attempt), reference, probe)
            except EngineError as exc:
                LOG.warning("engine auto: %s", exc)
                tried.append(str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - a converter bug must not stop the night: next engine
                LOG.warning("engine auto: %s could not load the model: %r", engine, exc)
                tried.append(f"{engine}: {type(exc).__name__}: {exc}"[:300])
                break
            loaded.info.update(chosen_by="auto", cpu_features=features)
            if tried:
                loaded.info["fallbacks"] = tried
            return _check_first_batch(loaded, embed_fn, fallback=True)
    raise EngineError("no engine could run the model: " + "; ".join(tried))
