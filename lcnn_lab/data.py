"""CIFAR-10, loaded from wherever it already is, and decoded only once.

Every accuracy in this book is measured on the real CIFAR-10: 50,000 training and 10,000 test
images, 32x32 RGB, in ten classes. There is no synthetic stand-in: if the data cannot be found,
:func:`load_cifar10` stops with an error that says where it looked and how to fix it.

**Where it looks**, in this order, stopping at the first folder that holds CIFAR-10:

1. the ``root`` argument of :func:`load_cifar10` / :func:`data_source`;
2. the folder in the ``LCNN_DATA`` environment variable;
3. the per-user cache folder, ``<cache>/data`` (see :func:`lcnn_lab.config.cache_dir`).

**What it accepts** in each folder, best first:

- the official Python release: a ``cifar-10-batches-py/`` folder (``data_batch_1`` ...
  ``data_batch_5`` and ``test_batch``) or its archive ``cifar-10-python.tar.gz``;
- an image-folder mirror: ``train/<class>/*.png|jpg|jpeg`` and ``test/<class>/...``, either in
  the folder itself or in one of its subfolders (such as ``cifar10-jpeg/``);
- a ``.tar.gz`` (or ``.tgz``, ``.tar``) of such an image-folder tree, read without unpacking it.

Class folders sorted alphabetically give the labels 0-9, the same order as :data:`CLASSES`.
If none of the three places holds CIFAR-10, the official release (about 170 MB) is downloaded
into the cache folder; without internet access you get a :class:`DataNotFoundError` instead.

**Decoding once.** Turning 60,000 JPEG files into arrays takes a few seconds, so the decoded
arrays are saved as one ``.npz`` file per split, next to the source when that folder is
writable, otherwise in ``<cache>/data``. Later loads read that file (well under a second). A
damaged cache file is noticed, reported with a warning and rebuilt from the source.

Print :func:`data_source` next to an accuracy so a reader knows which copy it was measured on:
the JPEG mirror's pixels differ slightly from the official release. Stored results record the copy
as its kind and SHA-256 (:attr:`DataSource.provenance`), never as a folder of the measuring machine.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import config

__all__ = ["CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "DataNotFoundError", "DataSource", "check_full_dataset",
           "data_source", "download_cifar10", "load_cifar10", "normalize"]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the 50,000 training images, in [0, 1] units (the values airbench uses).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

SPLITS = ("train", "test")
PER_CLASS = {"train": 5_000, "test": 1_000}       # images per class in the full dataset
OFFICIAL_DIR = "cifar-10-batches-py"
OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"
OFFICIAL_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CACHE_VERSION = 1   # bump when the cache layout changes, so old files are simply not found


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is in none of the places :func:`data_source` looks, and it could not be downloaded."""


@dataclass(frozen=True)
class DataSource:
    """Which copy of CIFAR-10 is used: ``kind`` is ``"official"`` or ``"mirror"``.

    ``str(source)`` names it for a reader ("CIFAR-10 JPEG mirror (cifar10-jpeg.tar.gz, sha256
    8d843737…)"); :attr:`checksum` identifies its content, so that a stored result says which copy
    it was measured on without naming a folder of the machine that measured it.
    """
    kind: str
    path: str
    description: str    # e.g. "CIFAR-10 JPEG mirror"

    @property
    def checksum(self) -> str:
        """SHA-256 of the source's files (an archive itself; the six batch files of the official
        folder; every image of a folder tree, with its relative path), computed once per process."""
        return _checksum(self.path, _source_key(self))

    @property
    def provenance(self) -> dict[str, str]:
        """What a stored result records about its data: the kind and the checksum, never a path."""
        return {"data": self.kind, "data_sha256": self.checksum}

    def __str__(self) -> str:
        return f"{self.description} ({Path(self.path).name}, sha256 {self.checksum[:8]}…)"


# ----------------------------------------------------------------------------------------------
# Finding the data

def _member_parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _tree_image(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """``(split, class)`` for a path ending in ``<split>/<class>/<image>``, else None."""
    if len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return parts[-3], parts[-2]
    return None


def _image_format(name: str) -> str:
    return "PNG" if name.lower().endswith(".png") else "JPEG"


def _peek_archive(path: Path) -> tuple[str, str] | None:
    """Read the first entries of an archive to tell what it holds: ``(kind, what)``, or None."""
    try:
        with tarfile.open(path, "r|*") as tar:   # streaming: only the start is decompressed
            for i, member in enumerate(tar):
                parts = _member_parts(member.name)
                if OFFICIAL_DIR in parts:
                    return "official", "official release"
                if member.isfile() and _tree_image(parts):
                    return "mirror", f"{_image_format(member.name)} mirror"
                if i >= 50:
                    break
    except (tarfile.TarError, OSError, EOFError):
        pass   # not an archive, or not one we can read: it cannot be CIFAR-10 then
    return None


def _is_tree(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "test").is_dir()


def _tree_format(folder: Path) -> str:
    """``JPEG`` or ``PNG``, from the first image file found, for the description."""
    for split_dir in (folder / s for s in SPLITS):
        for cls in sorted(split_dir.iterdir()) if split_dir.is_dir() else []:
            for file in cls.iterdir() if cls.is_dir() else []:
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    return _image_format(file.name)
    return "image-folder"


def _find_in(folder: Path) -> DataSource | None:
    """The best CIFAR-10 copy in one folder (or the folder/archive itself), or None."""
    if folder.is_file():   # the user pointed at an archive itself
        peeked = _peek_archive(folder)
        if peeked is None:
            return None
        return DataSource(peeked[0], str(folder), f"CIFAR-10 {peeked[1]}")
    if not folder.is_dir():
        return None
    official = folder if folder.name == OFFICIAL_DIR else folder / OFFICIAL_DIR
    if (official / "test_batch").is_file():
        return DataSource("official", str(official), "CIFAR-10 official release")
    archive = _find_in(folder / OFFICIAL_ARCHIVE) if (folder / OFFICIAL_ARCHIVE).is_file() else None
    if archive is not None:
        return archive
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != OFFICIAL_DIR)
    for tree in [folder, *subfolders]:
        if _is_tree(tree):
            return DataSource("mirror", str(tree), f"CIFAR-10 {_tree_format(tree)} mirror")
    # Archives under other names: peeking costs a little decompression, so they come last.
    archives = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES))
    found = [source for source in map(_find_in, archives) if source is not None]
    found.sort(key=lambda source: source.kind != "official")   # stable: official first, then by name
    return found[0] if found else None


def _search_places(root: str | os.PathLike | None) -> list[tuple[Path | None, str]]:
    """The folders to search, in order, each with the reason it is searched (None: not set)."""
    env = os.environ.get("LCNN_DATA", "").strip()
    return [(None if root is None else Path(root).expanduser(), "the root argument"),
            (Path(env).expanduser() if env else None, "$LCNN_DATA"),
            (config.cache_dir() / "data", "the per-user cache")]


def download_cifar10(folder: Path) -> Path:
    """Download the official release into ``folder`` with torchvision; return its ``cifar-10-batches-py``.

    Kept as a small separate function so that tests can replace it to simulate being offline.
    """
    from torchvision.datasets import CIFAR10

    folder.mkdir(parents=True, exist_ok=True)
    # Download into a scratch folder and move the result into place only when it is complete,
    # so an interrupted download never leaves a half-written release that looks like the real one.
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)   # torchvision sets no timeout; without one a dead network hangs forever
    try:
        CIFAR10(root=str(scratch), train=True, download=True)
        target = folder / OFFICIAL_DIR
        if not target.exists():
            os.replace(scratch / OFFICIAL_DIR, target)
        return target
    finally:
        socket.setdefaulttimeout(previous_timeout)
        shutil.rmtree(scratch, ignore_errors=True)


def data_source(root: str | os.PathLike | None = None, *, download: bool = True) -> DataSource:
    """Which copy of CIFAR-10 :func:`load_cifar10` uses with the same ``root``; nothing is decoded.

    Downloads the official release when no copy is found and ``download`` is true.
    """
    places = _search_places(root)
    for folder, _ in places:
        found = _find_in(folder) if folder is not None else None
        if found is not None:
            return found
    problem = "downloading was not allowed (download=False)"
    if download:
        try:
            download_cifar10(config.cache_dir() / "data")
            found = _find_in(config.cache_dir() / "data")
            if found is not None:
                return found
            problem = "the download finished but left no readable release"
        except Exception as err:  # noqa: BLE001 - any failure means the same thing to the learner
            problem = f"downloading it failed ({type(err).__name__}: {err})"
    looked = "\n".join(f"  - {why} is not set" if folder is None else
                       f"  - {folder}  ({why}{'' if folder.exists() else ', does not exist'})"
                       for folder, why in places if folder is not None or why == "$LCNN_DATA")
    raise DataNotFoundError(
        f"CIFAR-10 was not found, and {problem}.\nLooked in:\n{looked}\n"
        f"for a {OFFICIAL_DIR}/ folder, {OFFICIAL_ARCHIVE}, train/<class>/ and test/<class>/ image "
        "folders, or a .tar.gz of them.\nTo fix it, either set LCNN_DATA to a folder holding "
        "CIFAR-10 or its mirror tarball (for example: export LCNN_DATA=/path/to/shared/data), "
        "or connect to the internet and run again to download the official release (~170 MB).")


# ----------------------------------------------------------------------------------------------
# Decoding the formats

def _unpickle_batch(fileobj) -> tuple[np.ndarray, np.ndarray]:
    # The official release is a set of Python pickles; only load files you trust.
    batch = pickle.load(fileobj, encoding="bytes")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError("a batch has no 'data' or 'labels' entry")
    images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)   # stored as R, G, B planes
    return images, np.asarray(labels, dtype=np.int64)


def _decode_official(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits of the official release, from its folder or its archive."""
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if path.is_dir():
        for name in OFFICIAL_FILES["train"] + OFFICIAL_FILES["test"]:
            with open(path / name, "rb") as f:
                batches[name] = _unpickle_batch(f)
    else:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in OFFICIAL_FILES["train"] + OFFICIAL_FILES["test"]:
                    batches[name] = _unpickle_batch(tar.extractfile(member))
    out = {}
    for split, names in OFFICIAL_FILES.items():
        missing = [n for n in names if n not in batches]
        if missing:
            raise ValueError(f"the official release at {path} is incomplete: {', '.join(missing)} is missing")
        out[split] = (np.concatenate([batches[n][0] for n in names]),
                      np.concatenate([batches[n][1] for n in names]))
    return out


def _decode_image(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im if im.mode == "RGB" else im.convert("RGB")   # grey or RGBA files become RGB
            array = np.asarray(rgb)
    except OSError as err:   # PIL's "cannot identify image file", "image file is truncated", ...
        raise ValueError(f"{name} is not a readable image ({err})") from err
    if array.shape != (32, 32, 3):
        raise ValueError(f"{name} is {array.shape[1]}x{array.shape[0]} pixels; CIFAR-10 images are 32x32")
    return array


def _label(cls: str, where: str) -> int:
    if cls not in CLASSES:
        raise ValueError(f"{where} has a class folder {cls!r}; CIFAR-10 class folders are named "
                         f"{', '.join(CLASSES)}")
    return CLASSES.index(cls)   # CLASSES is alphabetical, so this is the sorted-folder label


def _stack(items: list[tuple[int, str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack decoded images in a fixed order that does not depend on how the files were stored.

    Files are sorted by class and name, then the classes are interleaved (the first image of every
    class, then the second of every class, ...), so that the first 1,000 images of a split are as
    balanced as the whole split, just like the shuffled official release.
    """
    items.sort(key=lambda item: (item[0], item[1]))
    labels = np.array([label for label, _, _ in items], dtype=np.int64)
    rank = np.arange(len(labels)) - np.searchsorted(labels, labels)   # position within its class
    order = np.lexsort((labels, rank))                                 # by rank, then by class
    images = np.stack([items[i][2] for i in order]) if items else np.zeros((0, 32, 32, 3), np.uint8)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels[order]   # HWC -> CHW for torch


def _decode_tree(path: Path, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One split of an image-folder tree ``<path>/<split>/<class>/<image>``."""
    split_dir = path / split
    if not split_dir.is_dir():
        raise DataNotFoundError(f"the image folders at {path} have no {split}/ folder")
    files = [(_label(cls.name, str(split_dir)), f) for cls in sorted(split_dir.iterdir()) if cls.is_dir()
             for f in sorted(cls.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    items = [(label, f.name, _decode_image(f.read_bytes(), str(f)))
             for label, f in tqdm(files, desc=f"Decoding CIFAR-10 {split}", unit="img")]
    return {split: _stack(items)}


def _decode_tree_archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both splits of a tarball of image folders, streamed without unpacking to disk."""
    items: dict[str, list] = {split: [] for split in SPLITS}
    with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar, \
            tqdm(total=path.stat().st_size, desc="Decoding CIFAR-10", unit="B", unit_scale=True) as bar:
        for member in tar:
            where = _tree_image(_member_parts(member.name)) if member.isfile() else None
            if where is None:
                continue
            split, cls = where
            label = _label(cls, f"{path} ({split}/)")
            items[split].append((label, member.name, _decode_image(tar.extractfile(member).read(),
                                                                   f"{member.name} in {path}")))
            bar.update(raw.tell() - bar.n)   # progress in compressed bytes read: its size is known
    return {split: _stack(found) for split, found in items.items() if found}


def _decode(source: DataSource, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode ``split`` (and, when it costs nothing extra, the other split too) from the source."""
    path = Path(source.path)
    try:
        if source.kind == "official":
            return _decode_official(path)
        if path.is_dir():
            return _decode_tree(path, split)
        return _decode_tree_archive(path)   # a stream must be read to its end anyway: keep both splits
    except (tarfile.TarError, EOFError, zlib.error, pickle.UnpicklingError) as err:
        raise ValueError(f"{source} could not be read to the end ({type(err).__name__}: {err}); "
                         "it is damaged or incomplete, so replace it with a fresh copy") from err


# ----------------------------------------------------------------------------------------------
# Checking

def check_full_dataset(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                       split: str) -> None:
    """Raise ``ValueError`` unless these are all of CIFAR-10's ``split``: 50,000 / 10,000 images, balanced."""
    _check_split(split)
    n_full = PER_CLASS[split] * len(CLASSES)
    if len(images) != n_full or len(labels) != n_full:
        raise ValueError(f"CIFAR-10 {split} has {n_full:,} images, but {len(images):,} images and "
                         f"{len(labels):,} labels were found; the copy is incomplete")
    counts = np.bincount(np.asarray(labels), minlength=len(CLASSES))
    if len(counts) != len(CLASSES) or (counts != PER_CLASS[split]).any():
        raise ValueError(f"CIFAR-10 {split} has {PER_CLASS[split]:,} images per class, but the counts "
                         f"are {counts.tolist()}; the copy is damaged")


def _looks_full(split: str, n: int) -> bool:
    # A copy holding at least half of a split is meant to be the real thing, so anything missing is
    # damage (an interrupted extraction or download) and must be reported. Smaller copies are
    # deliberate subsets (tests, demos) and are only checked for consistency.
    return 2 * n >= PER_CLASS[split] * len(CLASSES)


def _validate(images: np.ndarray, labels: np.ndarray, counts: np.ndarray, split: str) -> None:
    """Raise ``ValueError`` unless the arrays are well-formed and match the per-class ``counts``."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"images are {images.dtype} {tuple(images.shape)}, expected uint8 [N, 3, 32, 32]")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ValueError(f"labels are {labels.dtype} {tuple(labels.shape)}, expected int64 [{len(images)}]")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"labels run from {labels.min()} to {labels.max()}, expected 0 to 9")
    if not np.array_equal(np.bincount(labels, minlength=len(CLASSES)), counts):
        raise ValueError(f"the images per class {np.bincount(labels, minlength=len(CLASSES)).tolist()} "
                         f"differ from those recorded {counts.tolist()}")
    if _looks_full(split, len(labels)):
        check_full_dataset(images, labels, split)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")


# ----------------------------------------------------------------------------------------------
# The cache

def _source_key(source: DataSource) -> str:
    """Hash of the source's path, sizes and modification times: it changes when the source does."""
    path = Path(source.path)
    if source.kind == "official" and path.is_dir():
        stamped = [path / n for n in OFFICIAL_FILES["train"] + OFFICIAL_FILES["test"]]
    elif path.is_dir():
        # Adding or removing a file changes its folder's mtime, so the split and class folders are
        # enough to stat. Not the tree's own folder: the cache file itself is written there.
        stamped = [d for s in SPLITS if (path / s).is_dir() for d in [path / s, *(path / s).iterdir()]]
    else:
        stamped = [path]
    stamps = [f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in sorted(stamped)]
    return hashlib.sha1("\n".join([str(_CACHE_VERSION), *stamps]).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=8)
def _checksum(path: str, stamp: str) -> str:
    """SHA-256 of a source's content; ``stamp`` (its :func:`_source_key`) renews it when files change."""
    root, digest = Path(path), hashlib.sha256()
    if root.is_file():
        files = [(root.name, root)]
    elif (root / "test_batch").is_file():   # the official folder: its six pickles, in order
        files = [(n, root / n) for n in OFFICIAL_FILES["train"] + OFFICIAL_FILES["test"]]
    else:                                   # an image tree: every image, with its place in the tree
        files = sorted((p.relative_to(root).as_posix(), p) for s in SPLITS if (root / s).is_dir()
                       for p in (root / s).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for name, file in files:
        if not root.is_file():
            digest.update(name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _is_writable(folder: Path) -> bool:
    # os.access alone says yes to root everywhere; a folder with no write bit (like a shared,
    # read-only data folder) is meant to be left alone, so respect its mode too.
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _cache_folders(source: DataSource) -> list[Path]:
    """Where the cache may live: beside the source first, then the per-user cache."""
    path = Path(source.path)
    beside = path if (path.is_dir() and source.kind == "mirror") else path.parent   # a tree: inside it
    return [beside, config.cache_dir() / "data"]


def _cache_name(source: DataSource, split: str) -> str:
    return f"cifar10-{source.kind}-{split}-{_source_key(source)}.npz"


def _read_cache(file: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    # np.load checks each member's CRC-32, so a truncated or garbled file fails here.
    with np.load(file, allow_pickle=False) as npz:
        images, labels, counts = npz["images"], npz["labels"], npz["counts"]
    _validate(images, labels, counts, split)
    return images, labels


def _write_cache(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write one split's arrays atomically (readers see the old file or the whole new one)."""
    counts = np.bincount(labels, minlength=len(CLASSES))
    config.atomic_write(folder / name, lambda f: np.savez(f, images=images, labels=labels, counts=counts))
    return folder / name


def _store(source: DataSource, decoded: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Save each decoded split beside the source if possible, else in the per-user cache."""
    for split, (images, labels) in decoded.items():
        name = _cache_name(source, split)
        errors = []
        for folder in _cache_folders(source):
            if folder.exists() and not _is_writable(folder):
                continue
            try:
                _write_cache(folder, name, images, labels)
                break
            except OSError as err:
                errors.append(f"{folder}: {err}")
        else:
            reason = "; ".join(errors) or "no writable folder"
            warnings.warn(f"could not save the decoded CIFAR-10 {split} split ({reason}); "
                          "it will be decoded again next time", stacklevel=3)


# ----------------------------------------------------------------------------------------------
# The public entry points

def load_cifar10(split: str, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's ``split`` (``"train"`` or ``"test"``) as ``(images, labels)``.

    ``images`` is a uint8 tensor ``[N, 3, 32, 32]`` and ``labels`` an int64 tensor ``[N]``.
    See the module docstring for where the data is looked for; :func:`data_source` with the same
    ``root`` says which copy was used.
    """
    _check_split(split)
    source = data_source(root)
    name = _cache_name(source, split)
    for folder in _cache_folders(source):
        file = folder / name
        if not file.is_file():
            continue
        try:
            images, labels = _read_cache(file, split)
            return torch.from_numpy(images), torch.from_numpy(labels)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"the cached CIFAR-10 {split} split {file} is damaged ({err}); "
                          "decoding it again from the source", stacklevel=2)
            with contextlib.suppress(OSError):   # in a read-only folder it stays; the new copy goes elsewhere
                file.unlink()
    decoded = _decode(source, split)
    if split not in decoded:
        raise DataNotFoundError(f"{source} has no {split} images")
    for got_split, (images, labels) in decoded.items():
        _validate(images, labels, np.bincount(labels, minlength=len(CLASSES)), got_split)
    _store(source, decoded)
    images, labels = decoded[split]
    return torch.from_numpy(images), torch.from_numpy(labels)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images ``[..., 3, H, W]`` as floats with CIFAR-10's per-channel mean 0 and std 1.

    Works on any device; the result stays on the images' device.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 images (0-255), got {images.dtype}")
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"normalize expects images shaped [..., 3, H, W], got {list(images.shape)}")
    mean = torch.tensor(CIFAR10_MEAN, device=images.device, dtype=dtype).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=images.device, dtype=dtype).view(3, 1, 1)
    return (images.to(dtype) / 255 - mean) / std


if __name__ == "__main__":  # `make data` runs `python -m lcnn_lab data` (lcnn_lab/__main__.py), which does not warn
    import sys
    from lcnn_lab.__main__ import main
    sys.exit(main(["data"]))
