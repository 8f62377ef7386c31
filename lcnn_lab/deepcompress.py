"""Deep Compression: pruning, trained weight sharing and Huffman coding (Han, Mao & Dally, ICLR 2016).

Han et al. store AlexNet in 6.9 MB instead of 240 MB (35x) and VGG-16 in 11.3 MB instead of 552 MB
(49x) without losing accuracy, with three stages whose savings multiply (han2016deep, Fig. 1; the
ratios the surveys repeat, long2024 §4, li2023 §3):

1. **Pruning** (chapter 07, :mod:`lcnn_lab.prune`): zero the small weights and fine-tune. The survivors
   are stored sparsely, each with its *relative* position: the gap to the previous survivor, in 8 bits
   in a convolution and 5 bits in a fully connected layer (their §2).
2. **Trained quantization**, i.e. weight sharing (:func:`share_weights`): the surviving weights of a
   layer are clustered by k-means into at most 2^b clusters, and each weight becomes a b-bit index into
   a table of float32 centroids. Fine-tuning then trains the centroids: the gradient of a centroid is
   the sum of the gradients of the weights that share it (their Eq. 3).
3. **Huffman coding** (:func:`huffman_code`): the gaps and the cluster indices are far from uniformly
   distributed, so a prefix code with short codewords for the common values saves more (their §4:
   20-30 % of the storage).

Nothing is estimated: :func:`save_compressed` writes the model as a real file, :func:`load_compressed`
reads it back bit for bit, and :func:`measure_storage` reports the bytes of each stage's file.

The file (``.lcdc``; little-endian, laid out by :func:`save_compressed`) holds, per tensor of the
state dict, its name, dtype and shape, then:

* a conv or linear weight, from the ``"pruned"`` stage on: the gaps between its nonzero weights
  (row-major order), ``gap_bits`` bits each (8 conv, 5 linear). A gap of ``2^b`` positions or more
  cannot be written in ``b`` bits: it is written as escape symbols ``0``, each worth ``2^b - 1``
  positions, then the rest. (Han et al. insert a *filler zero*, a stored weight of value 0, which
  also costs a value slot: our escape costs only the gap symbol.) Then the values: float32 each
  (``"pruned"``), or a cluster index of ``ceil(log2 K)`` bits each plus the layer's K float32
  centroids (``"shared"``); at ``"huffman"`` the gaps and the indices are Huffman-coded, each stream
  with its own canonical code, stored as one length byte per symbol. The centroid table stays float32:
  each centroid occurs once, so a prefix code cannot shorten it.
* every other tensor (biases, BatchNorm scales and statistics; all tensors at ``"dense"``): its raw
  bytes in its own dtype (float32, and int64 for BatchNorm's batch counter).
"""
from __future__ import annotations

import copy
import dataclasses
import heapq
import io
import math
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from .prune import remove_masks
from .units import format_bytes

__all__ = [
    # Huffman coding
    "HuffmanCode", "huffman_code", "entropy_bits",
    # weight sharing
    "INITS", "kmeans_1d", "SharedWeight", "share_weights", "shared_layers", "centroids", "bake",
    # the file
    "STAGES", "GAP_BITS", "save_compressed", "read_compressed", "load_compressed", "Storage",
    "measure_storage",
    # the pipeline
    "deep_compression",
]


# ----------------------------------------------------------------------------------------------
# Huffman coding (Huffman 1952): a prefix code from symbol frequencies

def _check_frequencies(frequencies: Mapping[int, int]) -> dict[int, int]:
    for s, f in frequencies.items():
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"symbol {s!r} must be an int >= 0: Huffman codes here code whole numbers")
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
            raise ValueError(f"the frequency of symbol {s} is {f!r}; it must be a count, an int >= 0")
    return {int(s): int(f) for s, f in frequencies.items() if f > 0}


def _huffman_lengths(frequencies: dict[int, int]) -> dict[int, int]:
    """Each symbol's codeword length: its depth in Huffman's tree.

    Huffman's algorithm: put every symbol in a min-heap by frequency, then repeatedly merge the two
    rarest subtrees into one; every symbol of a merged subtree moves one level deeper.
    """
    if len(frequencies) == 1:   # a lone symbol still needs one bit per occurrence, or nothing is written
        return {s: 1 for s in frequencies}
    depth = dict.fromkeys(frequencies, 0)
    # (frequency, tie-breaker, symbols): ties go to the older subtree, so the code is repeatable
    heap = [(f, i, [s]) for i, (s, f) in enumerate(sorted(frequencies.items()))]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        f1, _, a = heapq.heappop(heap)
        f2, _, b = heapq.heappop(heap)
        for s in a + b:
            depth[s] += 1
        heapq.heappush(heap, (f1 + f2, order, a + b))
        order += 1
    return depth


def _canonical(lengths: Mapping[int, int]) -> dict[int, str]:
    """The canonical codewords for these lengths (Deflate's rule): shorter codes first, equal lengths in
    symbol order, each the previous one plus one. The lengths alone then define the code, which is
    why the file stores only them."""
    codes, code, previous = {}, 0, 0
    for s, n in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= n - previous
        codes[s] = format(code, f"0{n}b")
        code, previous = code + 1, n
    return codes


@dataclass(frozen=True)
class HuffmanCode:
    """A canonical prefix code: ``codes[symbol]`` is its codeword, a string of ``'0'`` and ``'1'``."""
    lengths: dict[int, int]                   # symbol -> codeword length, bits
    codes: dict[int, str] = field(init=False, repr=False)

    def __post_init__(self):
        for s, n in self.lengths.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"codeword length {n!r} of symbol {s} must be an int >= 1")
        if self.lengths and sum(2.0 ** -n for n in self.lengths.values()) > 1:
            raise ValueError("these code lengths break Kraft's inequality (sum of 2^-length > 1): "
                             "no prefix code has them")
        object.__setattr__(self, "codes", _canonical(self.lengths))

    def average_bits(self, frequencies: Mapping[int, int]) -> float:
        """Mean codeword length in bits per symbol, weighted by ``frequencies``."""
        total = sum(frequencies.values())
        return sum(f * self.lengths[s] for s, f in frequencies.items() if f) / total if total else 0.0

    def encode(self, symbols: Iterable[int]) -> bytes:
        """The codewords of ``symbols`` one after the other, packed 8 to a byte (the last byte padded
        with zeros: the reader must know how many symbols there are)."""
        try:
            bits = "".join(self.codes[int(s)] for s in symbols)
        except KeyError as err:
            raise ValueError(f"symbol {err.args[0]} has no codeword: it did not occur in the frequencies "
                             f"the code was built from") from None
        return _pack_bitstring(bits)

    def decode(self, data: bytes, count: int) -> list[int]:
        """The first ``count`` symbols coded in ``data``. Reads bit by bit: a prefix code needs no
        separators, because no codeword is the beginning of another."""
        if count == 0:
            return []
        word_to_symbol = {w: s for s, w in self.codes.items()}
        out: list[int] = []
        word = ""
        for bit in _unpack_bitstring(data):
            word += bit
            symbol = word_to_symbol.get(word)
            if symbol is not None:
                out.append(symbol)
                if len(out) == count:
                    return out
                word = ""
        raise ValueError(f"the data ends after {len(out)} of {count} symbols: it was not written "
                         f"with this code, or it is cut short")


def huffman_code(frequencies: Mapping[int, int] | Iterable[int]) -> HuffmanCode:
    """Huffman's optimal prefix code for ``frequencies`` ({symbol: count}) or for a sequence of symbols.

    No prefix code has a shorter total length ``sum(count * length)``; the mean length lies within
    one bit above the entropy (:func:`entropy_bits`). Symbols that never occur get no codeword.
    """
    if not isinstance(frequencies, Mapping):
        values = np.asarray(frequencies if isinstance(frequencies, np.ndarray) else list(frequencies),
                            dtype=np.int64)
        if values.size and values.min() < 0:
            raise ValueError(f"symbol {int(values.min())} must be an int >= 0")
        symbols, counts = np.unique(values, return_counts=True)
        frequencies = dict(zip(symbols.tolist(), counts.tolist()))
    return HuffmanCode(_huffman_lengths(_check_frequencies(frequencies)))


def entropy_bits(frequencies: Mapping[int, int]) -> float:
    """Shannon's entropy ``-sum p log2 p`` in bits per symbol: no code can average fewer bits."""
    total = sum(frequencies.values())
    return -sum(f / total * math.log2(f / total) for f in frequencies.values() if f) if total else 0.0


def _pack_bitstring(bits: str) -> bytes:
    if not bits:
        return b""
    return np.packbits(np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0")).tobytes()


def _unpack_bitstring(data: bytes) -> str:
    return (np.unpackbits(np.frombuffer(data, dtype=np.uint8)) + ord("0")).tobytes().decode("ascii")


# ----------------------------------------------------------------------------------------------
# Weight sharing: k-means on each layer's surviving weights (Han et al. 2016, §3)

def _cluster_means(values: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of each cluster's values, float64; NaN for an empty cluster."""
    x = values.detach().double().flatten()
    sums = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, index.flatten(), x)
    counts = torch.bincount(index.flatten(), minlength=k).to(torch.float64)
    return sums / counts


def _assign(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    # in 1-D the nearest of sorted centroids is found by the midpoints between them
    return torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)


INITS = {
    "linear": "k centroids evenly spaced over [min, max] of the values (Han et al.'s choice)",
    "density": "k centroids evenly spaced over the values' CDF: the k quantiles",
    "random": "k values drawn at random (Forgy)",
}


def _initial_centroids(x: torch.Tensor, k: int, init: str, seed: int) -> torch.Tensor:
    if init == "linear":
        return torch.linspace(float(x.min()), float(x.max()), k, dtype=x.dtype, device=x.device)
    if init == "density":
        return torch.quantile(x, torch.linspace(0, 1, k, dtype=x.dtype, device=x.device))
    g = torch.Generator().manual_seed(seed)
    return x[torch.randint(len(x), (k,), generator=g).to(x.device)].sort().values


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 100, init: str = "linear",
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on numbers: ``(centroids, index)`` with ``values ~ centroids[index]``.

    Han et al. compare three initialisations (:data:`INITS`) and find ``"linear"`` best, centroids
    spaced evenly over ``[min, max]``: it keeps centroids among the rare large weights, which matter
    most, where ``"density"`` and ``"random"`` crowd them where the weights are many and small
    (han2016deep §3.2, Fig. 4). After pruning, the values leave a gap around zero, and the linear
    centroids that start in it may stay empty. Empty clusters are dropped, so there are at most ``k``
    centroids, sorted ascending, float32. Stops when no value changes cluster, or after ``iters``
    rounds; ``seed`` drives ``"random"``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int: the number of clusters")
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of Han et al.'s initialisations {', '.join(map(repr, INITS))}")
    x = values.detach().flatten().double()
    if x.numel() == 0:
        raise ValueError("k-means needs at least one value to cluster")
    c = _initial_centroids(x, k, init, seed)
    index = _assign(x, c)
    for _ in range(iters):
        means = _cluster_means(x, index, k)
        c = torch.where(torch.isnan(means), c, means).sort().values   # an empty cluster stays put
        new = _assign(x, c)
        if torch.equal(new, index):
            break
        index = new
    used = torch.bincount(index, minlength=k) > 0
    index = (torch.cumsum(used, 0) - 1)[index]                        # renumber the non-empty clusters
    return _cluster_means(x, index, int(used.sum())).float(), index


class SharedWeight(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``): ``weight = centroids[index]``, 0 where pruned.

    Registered on a layer's ``weight``, the tensor the optimizer sees is the centroid table
    ``layer.parametrizations.weight.original`` (shape ``(K,)``); the weight is computed from it before
    every use. Autograd through the indexing adds up the gradients of all weights with the same index,
    which is exactly Han et al.'s centroid gradient (their Eq. 3)::

        dL/dC_k = sum over i, j with I_ij = k of dL/dW_ij

    ``index`` and ``mask`` are buffers, so training changes neither the assignment nor the sparsity.
    """

    def __init__(self, index: torch.Tensor, mask: torch.Tensor, bits: int):
        super().__init__()
        self.register_buffer("index", index.long())   # (weight's shape) cluster of every weight
        self.register_buffer("mask", mask.bool())     # (weight's shape) False where pruned
        self.bits = bits                              # at most 2**bits clusters
        self.clusters = int(index[mask].max()) + 1 if mask.any() else 0

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:       # (K,) -> weight's shape
        return torch.where(self.mask, centroids[self.index], centroids.new_zeros(()))

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:    # weight's shape -> (K,)
        # The centroids that reproduce `weight` best (least squares) for the fixed assignment: each
        # cluster's mean. Called when the parametrization is registered, or a weight is assigned.
        means = _cluster_means(weight[self.mask], self.index[self.mask], self.clusters)
        return means.nan_to_num(0.0).to(weight.dtype)

    def extra_repr(self) -> str:
        return f"clusters={self.clusters}, bits={self.bits}, kept={int(self.mask.sum())}/{self.mask.numel()}"


def _weight_layers(model: nn.Module, layers: Iterable[str] | None) -> list[tuple[str, nn.Module]]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if layers is None:
        return list(found.items())
    wanted = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in wanted if n not in found]
    if unknown:
        raise ValueError(f"no conv or linear layer named {', '.join(map(repr, unknown))}; "
                         f"the model has {', '.join(found) or 'none'}")
    return [(n, found[n]) for n in wanted]


def _check_bits(bits: object, where: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r}{where} must be an int from 1 to 8: each weight becomes a bits-bit "
                         f"index into 2**bits shared values (Han et al. use 8 for conv, 5 for fc layers)")
    return bits


def share_weights(model: nn.Module, bits: int | Mapping[str, int] = 5, layers: Iterable[str] | None = None,
                  iters: int = 100, init: str = "linear") -> nn.Module:
    """A copy of ``model`` whose conv and linear weights share at most ``2**bits`` values per layer.

    Each layer's nonzero weights are clustered by :func:`kmeans_1d` (linear initialisation); each
    weight is replaced by its cluster's centroid through a :class:`SharedWeight` parametrization, so
    fine-tuning with :func:`lcnn_lab.train.train` trains the centroids (han2016deep §3.1). Zeros,
    pruned weights, are not clustered and stay zero. :func:`bake` turns the result back into a plain
    model with the shared values as ordinary weights.

    Args:
        bits: one bit width for every layer, or ``{layer name: bits}`` (then those layers only; Han
            et al. use 8 bits for the convolutions and 5 for the fully connected layers of AlexNet).
        layers: the conv/linear layers to share (default all), when ``bits`` is an int.
        iters: most k-means rounds per layer.
        init: how k-means starts (:data:`INITS`): ``"linear"`` as Han et al.

    A model pruned with :mod:`lcnn_lab.prune` may still carry its masks: the copy's pruning is made
    permanent first. A layer whose weights are all zero is left as it is. For fine-tuning, note that
    a centroid's gradient adds up thousands of weights' gradients, and that the trainer counts the
    centroids among the parameters without weight decay (BatchNorm's and the biases', whose learning
    rate is multiplied by ``bias_lr``): fine-tune with a small ``lr`` and ``bias_lr=1``.
    """
    if isinstance(bits, Mapping):
        if layers is not None:
            raise ValueError("give the layers either as the keys of bits={layer: bits} or as layers=, "
                             "not both")
        per_layer = {name: _check_bits(b, f" for {name}") for name, b in bits.items()}
        layers = list(per_layer)
    else:
        per_layer = None
        _check_bits(bits, "")
    model = remove_masks(copy.deepcopy(model))
    for name, m in _weight_layers(model, layers):
        if parametrize.is_parametrized(m, "weight"):
            raise ValueError(f"layer {name} already shares its weights; call bake(model) first to make "
                             f"them plain weights, then share them again")
        b = per_layer[name] if per_layer is not None else bits
        w = m.weight.detach()
        mask = w != 0                                        # -0.0 counts as pruned too
        if not mask.any():
            continue
        values, idx = kmeans_1d(w[mask], 2 ** b, iters, init)
        index = torch.zeros(w.shape, dtype=torch.long, device=w.device)
        index[mask] = idx
        trainable = m.weight.requires_grad                   # e.g. a frozen whitening stem stays frozen
        parametrize.register_parametrization(m, "weight", SharedWeight(index, mask, b))
        with torch.no_grad():                                # the k-means centroids themselves
            m.parametrizations.weight.original.copy_(values.to(w.dtype))
        m.parametrizations.weight.original.requires_grad_(trainable)
    return model


def shared_layers(model: nn.Module) -> dict[str, SharedWeight]:
    """Every layer whose weight is shared: ``{layer name: its SharedWeight}`` (index, mask, bits)."""
    found = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            p = next((p for p in m.parametrizations.weight if isinstance(p, SharedWeight)), None)
            if p is not None:
                found[name] = p
    return found


def centroids(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of each shared layer's centroid table: ``{layer name: tensor (K,)}``."""
    return {name: dict(model.named_modules())[name].parametrizations.weight.original.detach().clone()
            for name in shared_layers(model)}


def bake(model: nn.Module) -> nn.Module:
    """Replace every shared weight by its current values, a plain parameter (in place; returns ``model``).

    The model then loads into a freshly built one; the values stay shared until it is trained again.
    """
    for name in shared_layers(model):
        m = model.get_submodule(name)
        # copy.deepcopy gives the copy of a parametrized layer the same generated class as the original,
        # and remove_parametrizations deletes the weight property from that class, so baking a copy
        # would take the weight away from the original too. A class of its own first avoids that.
        cls = type(m)
        m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


# ----------------------------------------------------------------------------------------------
# The compressed file

STAGES = {
    "dense": "every tensor as raw bytes: float32 weights",
    "pruned": "nonzero weights as float32 + their relative positions (8-bit conv / 5-bit fc gaps)",
    "shared": "relative positions + a ceil(log2 K)-bit cluster index per weight + K float32 centroids",
    "huffman": "as shared, with the gaps and the cluster indices Huffman-coded",
}
GAP_BITS = (8, 5)       # bits per relative position: (convolutions, fully connected layers), Han et al.
MAX_CODEBOOK = 256      # a layer with more distinct nonzero weights stores them as float32 values

_MAGIC, _VERSION = b"LCDC", 1
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool]
_TENSOR, _SPARSE = 0, 1                  # entry kinds
_FIXED, _HUFFMAN = 0, 1                  # how a symbol stream is coded
_RAW, _CODEBOOK = 0, 1                   # how the nonzero values are stored
PARTS = ("header", "positions", "values", "codebooks", "indices", "code_tables", "other")


class _Writer:
    """Appends bytes and counts them by part, so the sizes add up to the file's exactly."""

    def __init__(self):
        self.buffer, self.sizes = io.BytesIO(), dict.fromkeys(PARTS, 0)

    def write(self, part: str, data: bytes) -> None:
        self.buffer.write(data)
        self.sizes[part] += len(data)

    def pack(self, part: str, fmt: str, *values) -> None:
        self.write(part, struct.pack("<" + fmt, *values))


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("the file ends too early: it is cut short or not an lcnn_lab compressed file")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))


def _pack_ints(values: np.ndarray, bits: int) -> bytes:
    """Each value in ``bits`` bits, most significant first, packed 8 to a byte."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    return np.packbits(((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8)).tobytes()


def _unpack_ints(data: bytes, n: int, bits: int) -> np.ndarray:
    b = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n * bits].reshape(n, bits).astype(np.int64)
    return b @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def _gap_symbols(positions: np.ndarray, bits: int) -> np.ndarray:
    """The nonzero weights' positions as gaps of ``bits`` bits, a long gap as escapes 0 first."""
    step = 2 ** bits - 1                                     # the largest gap one symbol can hold
    gaps = np.diff(positions, prepend=-1)                    # >= 1
    escapes = (gaps - 1) // step
    symbols = np.zeros(len(gaps) + int(escapes.sum()), dtype=np.int64)
    symbols[np.cumsum(escapes + 1) - 1] = gaps - escapes * step
    return symbols


def _positions(symbols: np.ndarray, bits: int) -> np.ndarray:
    steps = np.where(symbols == 0, 2 ** bits - 1, symbols)
    return (np.cumsum(steps) - 1)[symbols != 0]


def _write_stream(w: _Writer, part: str, symbols: np.ndarray, bits: int, coding: int) -> None:
    """A stream of symbols < 2**bits: fixed ``bits`` bits each, or Huffman-coded behind its code table."""
    if coding == _FIXED:
        w.write(part, _pack_ints(symbols, bits))
        return
    code = huffman_code(symbols)
    lengths = [code.lengths.get(s, 0) for s in range(max(code.lengths, default=-1) + 1)]
    w.pack("code_tables", "H", len(lengths))
    w.write("code_tables", bytes(lengths))
    payload = code.encode(symbols)
    w.pack("header", "I", len(payload))
    w.write(part, payload)


def _read_stream(r: _Reader, n: int, bits: int, coding: int) -> np.ndarray:
    if coding == _FIXED:
        return _unpack_ints(r.read(math.ceil(n * bits / 8)), n, bits)
    (alphabet,) = r.unpack("H")
    code = HuffmanCode({s: n for s, n in enumerate(r.read(alphabet)) if n})
    (size,) = r.unpack("I")
    return np.asarray(code.decode(r.read(size), n), dtype=np.int64)


def _index_bits(k: int) -> int:
    return max(1, math.ceil(math.log2(k)))


def _write_sparse(w: _Writer, weight: torch.Tensor, stage: str, gap_bits: int) -> None:
    flat = weight.reshape(-1)
    positions = torch.nonzero(flat).flatten()
    values = flat[positions]
    symbols = _gap_symbols(positions.numpy(), gap_bits)
    coding = _HUFFMAN if stage == "huffman" else _FIXED
    w.pack("header", "BIIB", gap_bits, len(values), len(symbols), coding)
    _write_stream(w, "positions", symbols, gap_bits, coding)
    table, index = torch.unique(values, sorted=True, return_inverse=True)
    if stage == "pruned" or not 0 < len(table) <= MAX_CODEBOOK:
        w.pack("header", "B", _RAW)
        w.write("values", values.numpy().tobytes())
        return
    w.pack("header", "BH", _CODEBOOK, len(table))
    w.write("codebooks", table.numpy().tobytes())
    _write_stream(w, "indices", index.numpy(), _index_bits(len(table)), coding)


def _read_sparse(r: _Reader, shape: tuple[int, ...]) -> torch.Tensor:
    gap_bits, nnz, n_symbols, coding = r.unpack("BIIB")
    positions = _positions(_read_stream(r, n_symbols, gap_bits, coding), gap_bits)
    (kind,) = r.unpack("B")
    if kind == _RAW:
        values = np.frombuffer(r.read(4 * nnz), dtype="<f4")
    else:
        (k,) = r.unpack("H")
        table = np.frombuffer(r.read(4 * k), dtype="<f4")
        values = table[_read_stream(r, nnz, _index_bits(k), coding)]
    flat = np.zeros(math.prod(shape), dtype=np.float32)
    flat[positions] = values
    return torch.from_numpy(flat).reshape(shape)


def _raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _plain_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The state dict a plain model would have (pruning made permanent, shared weights baked), on the
    CPU, and the names of its conv/linear weights."""
    plain = bake(remove_masks(copy.deepcopy(model)))
    weights = {f"{n}.weight" if n else "weight" for n, m in plain.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
    return {k: v.detach().cpu() for k, v in plain.state_dict().items()}, weights


def save_compressed(model: nn.Module, path: str | Path, stage: str = "huffman",
                    gap_bits: Sequence[int] = GAP_BITS) -> dict[str, int]:
    """Write ``model`` to ``path`` as Deep Compression's ``stage`` stores it; return the bytes by part.

    ``stage`` is one of :data:`STAGES` (the module docstring lays out the file). A pruned model may
    carry its masks and a shared one its parametrizations: what is written is the weights they
    compute. At ``"shared"`` and ``"huffman"``, a layer whose nonzero weights take at most 256
    distinct values is stored as cluster indices and centroids, one with more (a layer left
    unshared) as float32 values. ``gap_bits`` is ``(conv, linear)``: bits per relative position.

    The returned sizes, in bytes: ``header`` (names, shapes, counts), ``positions`` (gaps),
    ``values`` (float32 weights), ``codebooks`` (centroids), ``indices`` (cluster indices),
    ``code_tables`` (the Huffman codes' lengths), ``other`` (biases, BatchNorm) and ``total``, the
    file's size.
    """
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r} is not one of Deep Compression's stages {', '.join(map(repr, STAGES))}")
    if len(gap_bits) != 2 or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16
                                 for b in gap_bits):
        raise ValueError(f"gap_bits={gap_bits!r} must be two ints from 1 to 16: the bits per relative "
                         f"position in (convolutions, linear layers)")
    state, weights = _plain_state(model)
    modules = dict(model.named_modules())
    w = _Writer()
    w.pack("header", "4sBBI", _MAGIC, _VERSION, list(STAGES).index(stage), len(state))
    for name, t in state.items():
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} is a {t.dtype} tensor, which this file format does not store")
        sparse = stage != "dense" and name in weights
        if sparse and t.dtype != torch.float32:
            raise ValueError(f"{name} is {t.dtype}; the compressed format stores float32 weights: "
                             f"save model.float()")
        encoded = name.encode("utf-8")
        w.pack("header", f"H{len(encoded)}sBBB", len(encoded), encoded, _SPARSE if sparse else _TENSOR,
               _DTYPES.index(t.dtype), t.ndim)
        w.pack("header", f"{t.ndim}I", *t.shape)
        if sparse:
            layer = modules.get(name.rsplit(".", 1)[0] if "." in name else "")
            _write_sparse(w, t, stage, gap_bits[1] if isinstance(layer, nn.Linear) else gap_bits[0])
        else:
            w.write("values" if name in weights else "other", _raw_bytes(t))
    data = w.buffer.getvalue()
    Path(path).write_bytes(data)
    return {**w.sizes, "total": len(data)}


def read_compressed(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in a file written by :func:`save_compressed`."""
    r = _Reader(Path(path).read_bytes())
    magic, version, _, count = r.unpack("4sBBI")
    if magic != _MAGIC:
        raise ValueError(f"{path} is not an lcnn_lab compressed model (it does not start with {_MAGIC!r})")
    if version != _VERSION:
        raise ValueError(f"{path} is format version {version}; this lcnn_lab reads version {_VERSION}")
    state = {}
    for _ in range(count):
        (n,) = r.unpack("H")
        name = r.read(n).decode("utf-8")
        kind, dtype_code, ndim = r.unpack("BBB")
        shape = r.unpack(f"{ndim}I")
        dtype = _DTYPES[dtype_code]
        if kind == _SPARSE:
            state[name] = _read_sparse(r, shape)
        else:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            raw = torch.frombuffer(bytearray(r.read(nbytes)), dtype=torch.uint8)
            state[name] = raw.view(dtype).reshape(shape)
    if r.pos != len(r.data):
        raise ValueError(f"{path} has {len(r.data) - r.pos} bytes after its last tensor: it is damaged")
    return state


def load_compressed(path: str | Path, model: nn.Module) -> nn.Module:
    """Load a file written by :func:`save_compressed` into ``model`` (in place; returns it).

    ``model`` is a plain model of the same architecture, e.g. a fresh ``create_model(...)``: the file
    holds plain weights, so a model with pruning masks or shared weights cannot take them.
    """
    if shared_layers(model) or any(hasattr(m, "weight_mask") for m in model.modules()):
        raise ValueError("load into a plain model (e.g. a fresh lcnn_lab.models.create_model(...)), not "
                         "one with pruning masks or shared weights: the file holds plain weights")
    state = read_compressed(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{Path(path).name} does not fit this {type(model).__name__}; was it saved "
                         f"from the same architecture and knobs? ({err})") from None
    return model


# ----------------------------------------------------------------------------------------------
# Storage after each stage, in bytes of real files

@dataclass(frozen=True)
class Storage:
    """Bytes of the file each stage of Deep Compression writes (:func:`save_compressed`)."""
    dense: int                          # every tensor raw (float32): the starting point
    pruned: int                         # nonzero weights float32 + their gaps at 8 / 5 bits
    shared: int                         # + a cluster index per weight instead of its value, + centroids
    huffman: int                        # gaps and cluster indices Huffman-coded
    parts: dict[str, dict[str, int]]    # stage -> {part: bytes} (see save_compressed)

    def ratio(self, stage: str) -> float:
        """How many times smaller than dense the ``stage``'s file is (Han et al.'s "35x")."""
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not one of {', '.join(map(repr, STAGES))}")
        return self.dense / getattr(self, stage)

    def table(self) -> pd.DataFrame:
        """One row per stage: bytes, ratio to dense, and the bytes of each part of the file."""
        rows = [{"stage": s, "bytes": getattr(self, s), "x smaller than dense": self.ratio(s),
                 **{p: self.parts[s][p] for p in PARTS}} for s in STAGES]
        return pd.DataFrame(rows).set_index("stage")

    def __str__(self) -> str:
        return ", ".join(f"{s} {format_bytes(getattr(self, s))} ({self.ratio(s):.1f}x)" for s in STAGES)


def measure_storage(dense: nn.Module, pruned: nn.Module, shared: nn.Module,
                    folder: str | Path | None = None) -> Storage:
    """Write the file of each stage and measure it: the dense model, the pruned one, and the pruned and
    shared one twice (without and with Huffman coding). The files go to ``folder`` as
    ``<stage>.lcdc`` (default: a temporary folder, removed after)."""
    models = {"dense": dense, "pruned": pruned, "shared": shared, "huffman": shared}
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(folder) if folder is not None else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        parts = {s: save_compressed(m, where / f"{s}.lcdc", s) for s, m in models.items()}
    return Storage(**{s: p["total"] for s, p in parts.items()}, parts=parts)


# ----------------------------------------------------------------------------------------------
# The whole pipeline on a trained model, kept in the results store

def deep_compression(base: nn.Module, amount: float = 0.9, bits: int = 4, finetune_epochs: float = 0.5,
                     eval_images: int | None = None, store=None, progress: bool = False) -> dict:
    """Han et al.'s three stages on a trained ``base``: prune ``amount`` of the weights (global
    magnitude) and fine-tune with the masks on; share each layer's weights among ``2**bits`` centroids
    and fine-tune the centroids; Huffman-code the file. Accuracy is measured after every step, storage
    in bytes of each stage's real file.

    The result is kept in the results store (kind ``"deepcompress"``, keyed by the base's weights, the
    settings and the budget), with two files beside its entry: the pruned, fine-tuned model at the
    ``"pruned"`` stage (its float32 weights, stored losslessly: the file is also its checkpoint) and the
    final model at the ``"huffman"`` stage. Returns ``{"stages": [...], "files": {...}, "seconds"}``.
    """
    from . import config
    from .data import data_source
    from .prune import prune_unstructured
    from .results import ResultsStore, make_key
    from .train import TrainConfig, evaluate, train
    from .trained import state_hash

    if not 0 < amount < 1:
        raise ValueError(f"amount={amount!r} must be a fraction between 0 and 1 (the share of weights pruned)")
    _check_bits(bits, "")
    store = store if store is not None else ResultsStore()
    # the pruned network fine-tunes as chapter 07's; the centroids with a small step and no bias_lr boost:
    # a centroid's gradient sums those of thousands of weights
    prune_cfg = TrainConfig(epochs=finetune_epochs, lr=0.02, progress=progress).resolved()
    share_cfg = dataclasses.replace(prune_cfg, lr=0.002, bias_lr=1.0, whiten=False, dirac=False)
    key = make_key("deepcompress", base=state_hash(base), amount=amount, bits=bits, prune_train=prune_cfg.key(),
                   share_train=share_cfg.key(), eval_images=eval_images, data=data_source().kind,
                   device=config.get_device().type)
    path = store.path(key)
    files = {"pruned": path.with_suffix(".pruned.lcdc"), "huffman": path.with_suffix(".huffman.lcdc")}

    def compute() -> tuple[dict, dict]:
        rows, seconds = [], 0.0

        def row(stage: str, step: str, model: nn.Module) -> None:
            rows.append({"stage": stage, "step": step, "accuracy": evaluate(model, n=eval_images).value})

        row("dense", "trained", base)
        pruned = prune_unstructured(base, amount, scope="global")
        row("pruned", "before fine-tuning", pruned)
        seconds += train(pruned, prune_cfg).seconds
        row("pruned", "fine-tuned", pruned)
        remove_masks(pruned)
        shared = share_weights(pruned, bits)
        row("shared", "before fine-tuning", shared)
        seconds += train(shared, share_cfg).seconds
        row("shared", "centroids fine-tuned", shared)
        final = bake(copy.deepcopy(shared))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_compressed(pruned, files["pruned"], "pruned")
        storage = measure_storage(base, pruned, final)
        save_compressed(final, files["huffman"], "huffman")
        decoded = load_compressed(files["huffman"], copy.deepcopy(base))
        want, got = final.state_dict(), decoded.state_dict()
        exact = want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        row("huffman", "decoded from the file", decoded)
        for r in rows:
            r["bytes"] = getattr(storage, r["stage"])
        return ({"stages": rows, "parts": storage.parts, "seconds": seconds, "exact_round_trip": exact,
                 "files": {k: v.name for k, v in files.items()}},
                config.provenance(prune_cfg.budget))

    entry = store.get_or_compute(key, compute)
    if not all(f.exists() for f in files.values()):       # an entry copied without its files
        raise ValueError(f"the results store has the Deep Compression entry {path.name} but not its files "
                         f"({', '.join(f.name for f in files.values())}); delete the entry to compute it again")
    return {**entry["metrics"], "paths": files, "provenance": entry["provenance"]}
