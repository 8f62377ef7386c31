"""ONNX Runtime: a second inference engine for the book's models (chapter 11's cost atlas).

PyTorch eager runs a model one operator at a time, as its Python code calls them. An inference engine
reads the whole graph first and then optimises it: it folds BatchNorm into the preceding convolution,
fuses activations into the kernels before them, removes what is computed twice, and plans memory once.
The same model, the same numbers, a different time per image; which is faster depends on the model and
the machine, so the cost atlas measures both: MACs and parameters do not say it.

* **ONNX** (Open Neural Network Exchange) is the file: a graph of standard operators with the weights.
  :func:`export_onnx` writes it with ``torch.onnx.export(..., dynamo=True)``: the exporter built on
  ``torch.export`` (the default since torch 2.9; it needs the ``onnxscript`` package). The older
  TorchScript exporter (``dynamo=False``) is deprecated and warns that it will be removed.
* **ONNX Runtime** (Microsoft) runs the file: :func:`session` opens it on the CPU with a chosen
  number of threads and every graph optimisation on; :func:`run` feeds it a batch;
  :func:`measure_latency_onnx` times it exactly as :func:`lcnn_lab.profile.measure_latency` times
  PyTorch (same timer, same :class:`~lcnn_lab.profile.Latency`), so the two compare side by side.
* **int8**: :func:`quantize_int8` quantizes the file with ONNX Runtime's post-training static
  quantizer (li2023 §3.2): per-channel int8 weights, uint8 activations whose ranges are calibrated on
  real CIFAR-10 training images, stored as QuantizeLinear/DequantizeLinear pairs around each operator
  (the "QDQ" format), which the runtime fuses into integer kernels.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import timeit
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .config import check_positive_int, get_threads
from .data import normalize
from .deepcompress import bake
from .profile import Latency
from .prune import remove_masks
from .train import device_data, fixed_subset

# after lcnn_lab.profile, which silences the "No CUDA runtime" log line torch.utils.benchmark prints
from torch.utils import benchmark  # noqa: E402

__all__ = ["export_onnx", "session", "run", "measure_latency_onnx", "CifarCalibration", "quantize_int8",
           "size_bytes", "atlas_row"]

Size = Sequence[int]


def _ort():
    # imported when first needed, so that `import lcnn_lab` works where onnxruntime is not installed
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("lcnn_lab.runtime needs onnxruntime and onnx: pip install onnx onnxruntime "
                          "onnxscript (requirements.txt has the tested versions)") from err
    return onnxruntime


def _check_size(input_size: Size) -> tuple[int, ...]:
    shape = tuple(input_size)
    if len(shape) != 4 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"input_size={input_size!r} must be four positive ints (B, C, H, W), "
                         f"e.g. (1, 3, 32, 32) for one CIFAR-10 image")
    return shape


# ----------------------------------------------------------------------------------------------
# Export

def export_onnx(model: nn.Module, path: str | Path, input_size: Size = (1, 3, 32, 32),
                dynamic_batch: bool = True) -> Path:
    """Write ``model`` (in eval mode, on the CPU) to ``path`` as an ONNX file; return the path.

    Args:
        input_size: ``(B, C, H, W)`` of the example input the exporter traces the model with.
        dynamic_batch: if True the file accepts any batch size, else exactly ``B`` images.

    The model itself is not changed: a copy is exported, with pruning made permanent
    (:func:`lcnn_lab.prune.remove_masks`) and shared weights baked (:func:`lcnn_lab.deepcompress.bake`),
    so the file holds plain weights. An int8 PyTorch model (:func:`lcnn_lab.quant.to_int8`) cannot be
    exported: export the float model and use :func:`quantize_int8`. All weights go into the one file
    (no separate ``.data`` file).

    The copy runs once in PyTorch before it is traced: that checks that it accepts ``input_size``, and
    lets layers that set themselves up on their first call do so outside the exporter (the adder
    layer compiles its kernels then; inside the exporter ``torch.compile`` is skipped and the layer
    would keep the uncompiled kernels for the rest of the session). An adder layer is exported as a
    broadcast subtraction over every (window, filter) pair: ONNX has no L1-distance operator, so
    ONNX Runtime computes it in plain memory-bound kernels.
    """
    shape = _check_size(input_size)
    if any(type(m).__module__.startswith("torch.ao.nn") and ".quantized" in type(m).__module__
           for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is an int8 PyTorch model, which torch.onnx cannot export; "
                         f"export the float model and quantize the ONNX file with quantize_int8()")
    net = bake(remove_masks(copy.deepcopy(model))).cpu().float().eval()
    # torch.export takes a dimension of size 1 for a constant (its "0/1 specialisation"), so a file that
    # takes any batch is traced with a batch of 2
    example = torch.randn(max(shape[0], 2) if dynamic_batch else shape[0], *shape[1:])
    name = type(model).__name__
    try:
        with torch.no_grad():
            net(example)
    except Exception as err:
        raise ValueError(f"{name} cannot run on an input of size {tuple(example.shape)} "
                         f"({type(err).__name__}: {err}); check input_size") from err
    dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # the adder layer's one-time setup is done (above); under the exporter it only says so
            warnings.filterwarnings("ignore", message="torch.compile is ignored")
            torch.onnx.export(net, (example,), str(path), dynamo=True, external_data=False,
                              input_names=["images"], output_names=["logits"], dynamic_shapes=dynamic)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"torch.onnx could not export {name}: {type(err).__name__}: {first}. Usually a "
                         f"layer uses an operation ONNX has no operator for, or Python control flow "
                         f"that depends on the data") from err
    return path


# ----------------------------------------------------------------------------------------------
# Running it

def session(path: str | Path, threads: int | None = None, optimize: bool = True):
    """An ``onnxruntime.InferenceSession`` for the file at ``path``, on the CPU.

    ``threads`` is the intra-op thread count (default: ``config.get_threads()``, as for
    :func:`lcnn_lab.profile.measure_latency`); operators run one after another (no inter-op
    parallelism). ``optimize`` turns on all of ONNX Runtime's graph optimisations (constant folding,
    Conv+BatchNorm folding, operator fusion, layout changes); off, the graph runs as exported.
    """
    ort = _ort()
    if not Path(path).is_file():
        raise ValueError(f"no ONNX file at {path}: write one with export_onnx(model, path)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = get_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3   # errors only: its informational lines mean nothing to a reader
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _check_input(sess, shape: tuple[int, ...]) -> str:
    spec = sess.get_inputs()[0]
    expected = spec.shape   # ints, or names (str) / None for dynamic dimensions
    if len(expected) != len(shape) or any(isinstance(e, int) and e != s for e, s in zip(expected, shape)):
        wanted = tuple(e if isinstance(e, int) else "any" for e in expected)
        raise ValueError(f"the ONNX model takes input of shape {wanted}, got {shape}")
    return spec.name


def run(sess, x: torch.Tensor) -> torch.Tensor:
    """The session's output (the logits) for the float input batch ``x`` ``(B, C, H, W)``."""
    name = _check_input(sess, tuple(x.shape))
    out = sess.run(None, {name: x.detach().cpu().float().contiguous().numpy()})[0]
    return torch.from_numpy(out)


def _threads_of(sess) -> int:
    return int(sess.get_session_options().intra_op_num_threads)


def measure_latency_onnx(path_or_session, input_size: Size = (1, 3, 32, 32), batch: int | None = None,
                         threads: int | None = None, warmup: int = 5, min_run_time: float = 0.5) -> Latency:
    """Time the ONNX model on a random input, as :func:`lcnn_lab.profile.measure_latency` times PyTorch.

    The same timer (``torch.utils.benchmark.Timer.blocked_autorange``: ``warmup`` untimed runs, then
    ``min_run_time`` seconds of timed blocks) and the same :class:`~lcnn_lab.profile.Latency` (median,
    IQR, mean over blocks), so the two engines compare directly. Given a path, a :func:`session` with
    ``threads`` threads is opened (and its one-time graph optimisation is not timed); given a session,
    its own thread count is used and ``threads``, if given, must match it.
    """
    if isinstance(path_or_session, (str, os.PathLike)):
        sess = session(path_or_session, threads)
    else:
        sess = path_or_session
        if threads is not None and threads != _threads_of(sess):
            raise ValueError(f"threads={threads}, but the session was opened with {_threads_of(sess)} "
                             f"intra-op threads; open it with session(path, threads={threads})")
    threads = _threads_of(sess) or get_threads(None)   # 0 means "ORT's default": the core count
    shape = _check_size(input_size)
    if batch is not None:
        check_positive_int("batch", batch)
        shape = (batch, *shape[1:])
    name = _check_input(sess, shape)
    feed = {name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}

    def forward() -> None:
        sess.run(None, feed)

    for _ in range(warmup):
        forward()
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads,
                            timer=timeit.default_timer)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3, mean_ms=m.mean * 1e3,
                   n=len(m.times), calls=len(m.times) * m.number_per_run, batch=shape[0],
                   threads=threads, device="cpu")


# ----------------------------------------------------------------------------------------------
# int8: ONNX Runtime's post-training static quantization

def _calibration_images(calibration: int | torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Normalised float images: a fixed random subset of CIFAR-10's training split, or the given ones."""
    if isinstance(calibration, torch.Tensor):
        return normalize(calibration.cpu())
    check_positive_int("calibration", calibration, "(the number of training images to calibrate on)")
    images, _ = device_data("train", torch.device("cpu"))
    idx = fixed_subset(len(images), calibration, seed)
    return normalize(images if idx is None else images[idx])


class CifarCalibration:
    """Feeds batches of normalised CIFAR-10 images to ONNX Runtime's calibrator.

    An ``onnxruntime.quantization.CalibrationDataReader``: ``get_next()`` returns ``{input name:
    batch}`` until the images run out, then None. The calibrator records the range of every activation
    on them, and the quantizer derives each activation's scale and zero point from those ranges.
    """

    def __init__(self, images: torch.Tensor, input_name: str, batch_size: int = 32):
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        batch = self.images[self.start:self.start + self.batch_size]
        self.start += self.batch_size
        return {self.input_name: batch.contiguous().numpy()}

    def rewind(self) -> None:
        self.start = 0


def quantize_int8(path_in: str | Path, path_out: str | Path, calibration: int | torch.Tensor = 256,
                  per_channel: bool = True, reduce_range: bool = True, batch_size: int = 32) -> Path:
    """Quantize the float ONNX file ``path_in`` to int8 with ONNX Runtime; write ``path_out``, return it.

    ``onnxruntime.quantization.quantize_static`` in the QDQ format: weights int8 (symmetric, one scale
    per output channel if ``per_channel``), activations uint8 with min/max ranges calibrated on
    ``calibration``: a number of CIFAR-10 training images (a fixed random subset) or a uint8 image
    tensor ``(N, 3, 32, 32)``. The file is first pre-processed as ONNX Runtime asks (shape inference
    and graph optimisation, which folds BatchNorm into the convolutions, so the folded weights are the
    ones quantized). A file exported with a fixed batch is calibrated in batches of that size.

    ``reduce_range`` keeps the weights to 7 bits (-64..63). On an x86 CPU without VNNI instructions
    (AVX2 only, like the book's build machine) ONNX Runtime's uint8 x int8 kernel adds pairs of
    products in 16-bit registers, which overflow and saturate with full 8-bit weights: measured on
    cifar_net (quick budget, 500 test images), full 8-bit weights kept the float model's top-1 on
    77 % of the images and lost 10 points of accuracy; 7-bit weights kept it on 97 % and lost none.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)
    check_positive_int("batch_size", batch_size)
    images = _calibration_images(calibration)
    spec = session(path_in, threads=1, optimize=False).get_inputs()[0]
    if isinstance(spec.shape[0], int):
        batch_size = spec.shape[0]
        images = images[:len(images) - len(images) % batch_size]
        if not len(images):
            raise ValueError(f"the file takes batches of exactly {spec.shape[0]} images; calibrate on at "
                             f"least that many")
    path_out = Path(path_out)
    path_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(path_in), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(path_out), CifarCalibration(images, spec.name, batch_size),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range,
                        # a BatchNorm left after a pooling layer (cifar_net's stages) has 1-D weights:
                        # their channels lie on axis 0, not on the default axis 1
                        extra_options={"QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}})
    return path_out


def size_bytes(path: str | Path) -> int:
    """Bytes of an ONNX file, with its external-data file (``<name>.data``) if it has one."""
    path = Path(path)
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


# ----------------------------------------------------------------------------------------------
# One row of chapter 11's cost atlas, kept in the results store

def atlas_row(name: str, build, input_size: Size = (1, 3, 32, 32), threads: int = 1, int8: bool = True,
              min_run_time: float = 0.5, store=None) -> dict:
    """Params, MACs and the latency of ``build()`` (a function returning the model) in three runtimes:
    PyTorch eager, ONNX Runtime float32 and ONNX Runtime int8 (:func:`quantize_int8`, calibrated on
    CIFAR-10 images resized to the input), batch 1, ``threads`` threads; plus the ONNX files' sizes.

    Latency belongs to a machine: the results store keys the row by ``name``, the input, the threads,
    the CPU's name and the versions of torch and ONNX Runtime, so another machine measures its own.
    """
    from . import config
    from .profile import count_macs, count_params, measure_latency
    from .results import ResultsStore, make_key
    ort = _ort()
    shape = _check_size(input_size)
    store = store if store is not None else ResultsStore()
    key = make_key("atlas", model=name, input_size=list(shape), threads=threads, int8=int8,
                   machine=config.cpu_name(), torch=torch.__version__, onnxruntime=ort.__version__)

    def compute() -> tuple[dict, dict]:
        model = build().eval()
        row = {"params": count_params(model), "macs": count_macs(model, shape).total}
        lat = measure_latency(model, shape, threads=threads, min_run_time=min_run_time)
        row.update(eager_ms=lat.median_ms, eager_iqr_ms=lat.iqr_ms)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, Path(tmp) / "model.onnx", shape, dynamic_batch=False)
            lat = measure_latency_onnx(fp32, shape, threads=threads, min_run_time=min_run_time)
            row.update(ort_ms=lat.median_ms, ort_iqr_ms=lat.iqr_ms, onnx_bytes=size_bytes(fp32))
            if int8:
                images, _ = device_data("train", torch.device("cpu"))
                calib = images[fixed_subset(len(images), 64, 0)]
                if tuple(calib.shape[2:]) != shape[2:]:
                    calib = torch.nn.functional.interpolate(calib.float(), size=shape[2:], mode="bilinear",
                                                            align_corners=False).round().clamp(0, 255).to(torch.uint8)
                q = quantize_int8(fp32, Path(tmp) / "int8.onnx", calibration=calib, batch_size=shape[0])
                lat = measure_latency_onnx(q, shape, threads=threads, min_run_time=min_run_time)
                row.update(ort_int8_ms=lat.median_ms, ort_int8_iqr_ms=lat.iqr_ms, int8_bytes=size_bytes(q))
        return row, config.provenance(threads=threads, data=False)

    entry = store.get_or_compute(key, compute)
    return {"model": name, **entry["metrics"]}
