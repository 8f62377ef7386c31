"""Tests for lcnn_lab.data: every format on tiny fixtures, the cache, the offline error, and the
full CIFAR-10 mirror when ``LCNN_DATA`` points at one."""
from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcnn_lab import data

# Read before any test changes the environment: only the full-mirror test uses the real folders.
REAL_ENV = {name: os.environ.get(name) for name in ("LCNN_DATA", "LCNN_CACHE")}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own empty cache, no LCNN_DATA, and no network."""
    monkeypatch.setenv("LCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LCNN_DATA", raising=False)

    def offline(folder):
        raise OSError("no network in tests")
    monkeypatch.setattr(data, "download_cifar10", offline)


# ----------------------------------------------------------------------------------------------
# Fixtures written the way the real formats are

def make_split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images with the classes interleaved (0..9, 0..9, ...), the order load_cifar10 returns."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(10), per_class).astype(np.int64)
    return rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8), labels


def make_dataset(seed: int = 0, train_per_class: int = 2, test_per_class: int = 1):
    return {"train": make_split(train_per_class, seed), "test": make_split(test_per_class, seed + 1)}


def write_official(folder: Path, dataset) -> Path:
    """A cifar-10-batches-py folder in the official pickle format."""
    out = folder / "cifar-10-batches-py"
    out.mkdir(parents=True)
    images, labels = dataset["train"]
    chunks = np.array_split(np.arange(len(labels)), 5)
    batches = {f"data_batch_{i + 1}": idx for i, idx in enumerate(chunks)}
    for name, idx in batches.items():
        with open(out / name, "wb") as f:
            pickle.dump({b"data": images[idx].reshape(-1, 3072), b"labels": labels[idx].tolist()}, f)
    images, labels = dataset["test"]
    with open(out / "test_batch", "wb") as f:
        pickle.dump({b"data": images.reshape(-1, 3072), b"labels": labels.tolist()}, f)
    return out


def write_tree(folder: Path, dataset, suffix: str = ".png") -> Path:
    """``<folder>/<split>/<class>/NNNN<suffix>`` files."""
    for split, (images, labels) in dataset.items():
        for i, (image, label) in enumerate(zip(images, labels)):
            file = folder / split / data.CLASSES[label] / f"{i // 10:04d}{suffix}"
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(file)
    return folder


def write_tar(archive: Path, folder: Path, arcname: str) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def decode_files(folder: Path, split: str) -> np.ndarray:
    """The images of a tree decoded directly with PIL, in load_cifar10's order."""
    files = sorted((folder / split).glob("*/*"), key=lambda f: (f.stem, data.CLASSES.index(f.parent.name)))
    return np.stack([np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1) for f in files])


def assert_loads(root, dataset, kind: str):
    for split, (images, labels) in dataset.items():
        got_images, got_labels = data.load_cifar10(split, root)
        assert got_images.dtype == torch.uint8 and got_labels.dtype == torch.int64
        assert torch.equal(got_images, torch.from_numpy(images))
        assert torch.equal(got_labels, torch.from_numpy(labels))
    assert data.data_source(root).kind == kind


def temp_files(*folders: Path) -> list[Path]:
    return [f for folder in folders if folder.exists() for f in folder.rglob("*.tmp")]


# ----------------------------------------------------------------------------------------------
# Constants and small helpers

def test_constants():
    assert data.CLASSES == ("airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck")
    assert list(data.CLASSES) == sorted(data.CLASSES)   # sorted folder names give the same labels
    for stats in (data.CIFAR10_MEAN, data.CIFAR10_STD):
        assert len(stats) == 3 and all(isinstance(v, float) and 0 < v < 1 for v in stats)


def test_normalize():
    mean_pixel = torch.tensor([round(m * 255) for m in data.CIFAR10_MEAN], dtype=torch.uint8)
    images = mean_pixel.view(1, 3, 1, 1).expand(2, 3, 32, 32).contiguous()
    out = data.normalize(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert out.abs().max() < 0.01                       # the mean colour maps to about zero
    white = data.normalize(torch.full((1, 3, 4, 4), 255, dtype=torch.uint8), dtype=torch.float64)
    expected = [(1 - m) / s for m, s in zip(data.CIFAR10_MEAN, data.CIFAR10_STD)]
    assert white.dtype == torch.float64
    assert torch.allclose(white[0, :, 0, 0], torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="uint8"):
        data.normalize(images.float())
    with pytest.raises(ValueError, match="3, H, W"):
        data.normalize(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


def test_bad_split_names_the_valid_ones(tmp_path):
    write_official(tmp_path, make_dataset())
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.load_cifar10("validation", tmp_path)


def test_check_full_dataset():
    labels = np.repeat(np.arange(10), 1_000)
    images = np.zeros((10_000, 3, 32, 32), np.uint8)
    data.check_full_dataset(images, labels, "test")
    with pytest.raises(ValueError, match="10,000"):
        data.check_full_dataset(images[:-1], labels[:-1], "test")
    unbalanced = labels.copy()
    unbalanced[0] = 1
    with pytest.raises(ValueError, match="per class"):
        data.check_full_dataset(images, unbalanced, "test")
    with pytest.raises(ValueError, match="50,000"):
        data.check_full_dataset(images, labels, "train")


def test_data_source_is_small_and_frozen(tmp_path):
    write_official(tmp_path, make_dataset())
    source = data.data_source(tmp_path)
    assert source.kind == "official" and source.path == str(tmp_path / "cifar-10-batches-py")
    assert str(source).startswith("CIFAR-10 official release (") and "cifar-10-batches-py" in str(source)
    with pytest.raises(dataclasses.FrozenInstanceError):
        source.kind = "mirror"


# ----------------------------------------------------------------------------------------------
# Each format

def test_official_folder(tmp_path):
    dataset = make_dataset()
    write_official(tmp_path, dataset)
    assert_loads(tmp_path, dataset, "official")
    assert_loads(tmp_path / "cifar-10-batches-py", dataset, "official")   # the folder itself


def test_official_archive(tmp_path):
    dataset = make_dataset()
    write_official(tmp_path / "staging", dataset)
    write_tar(tmp_path / "data" / "cifar-10-python.tar.gz", tmp_path / "staging" / "cifar-10-batches-py",
              "cifar-10-batches-py")
    assert_loads(tmp_path / "data", dataset, "official")
    assert data.data_source(tmp_path / "data").path.endswith("cifar-10-python.tar.gz")


def test_png_tree(tmp_path):
    dataset = make_dataset()
    write_tree(tmp_path, dataset, ".png")                 # PNG is lossless: pixels come back exactly
    assert_loads(tmp_path, dataset, "mirror")
    assert str(data.data_source(tmp_path)).startswith("CIFAR-10 PNG mirror")


def test_jpeg_tree_in_a_subfolder(tmp_path):
    tree = write_tree(tmp_path / "cifar10-jpeg", make_dataset(), ".jpg")
    source = data.data_source(tmp_path)
    assert source.kind == "mirror" and source.path == str(tree)
    assert str(source).startswith("CIFAR-10 JPEG mirror")
    for split in ("train", "test"):
        images, labels = data.load_cifar10(split, tmp_path)
        assert torch.equal(images, torch.from_numpy(decode_files(tree, split)))
        assert torch.equal(labels, torch.from_numpy(make_dataset()[split][1]))


@pytest.mark.parametrize("arcname", ["cifar10-jpeg", "."])   # with and without a top-level folder
def test_jpeg_tree_archive(tmp_path, arcname):
    tree = write_tree(tmp_path / "tree", make_dataset(), ".jpg")
    archive = write_tar(tmp_path / "mirror" / "cifar10-jpeg.tar.gz", tree, arcname)
    source = data.data_source(tmp_path / "mirror")
    assert source.kind == "mirror" and source.path == str(archive)
    assert str(source).startswith("CIFAR-10 JPEG mirror")
    for split in ("train", "test"):
        images, labels = data.load_cifar10(split, tmp_path / "mirror")
        assert torch.equal(images, torch.from_numpy(decode_files(tree, split)))
        assert torch.equal(labels, torch.from_numpy(make_dataset()[split][1]))


def test_unknown_class_folder_is_a_clear_error(tmp_path):
    write_tree(tmp_path, make_dataset())
    (tmp_path / "train" / "cat").rename(tmp_path / "train" / "kitten")
    with pytest.raises(ValueError, match="'kitten'.*airplane"):
        data.load_cifar10("train", tmp_path)


def test_wrong_image_size_is_a_clear_error(tmp_path):
    write_tree(tmp_path, make_dataset())
    Image.new("RGB", (64, 48)).save(tmp_path / "test" / "dog" / "9999.png")
    with pytest.raises(ValueError, match="64x48.*32x32"):
        data.load_cifar10("test", tmp_path)


@pytest.mark.parametrize("kind", ["official", "mirror"])
def test_a_cut_off_archive_is_a_clear_error(tmp_path, kind):
    dataset = make_dataset(train_per_class=20)       # big enough that half the archive is past the peek
    if kind == "official":
        folder = write_official(tmp_path / "staging", dataset)
        name, arcname = "cifar-10-python.tar.gz", "cifar-10-batches-py"
    else:
        folder, name, arcname = write_tree(tmp_path / "staging", dataset), "mirror.tar.gz", "."
    archive = write_tar(tmp_path / "data" / name, folder, arcname)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])   # an interrupted download
    assert data.data_source(tmp_path / "data").kind == kind
    with pytest.raises(ValueError, match="damaged or incomplete"):
        data.load_cifar10("train", tmp_path / "data")


def test_a_copy_that_looks_full_must_be_full(tmp_path, monkeypatch):
    # Pretend CIFAR-10 has 2 training images per class: 3 per class (except one) is "most of it"
    # but not all of it, which is what an interrupted extraction looks like.
    monkeypatch.setattr(data, "PER_CLASS", {"train": 2, "test": 1})
    dataset = make_dataset(train_per_class=3)
    write_tree(tmp_path, dataset)
    (tmp_path / "train" / "cat" / "0002.png").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        data.load_cifar10("train", tmp_path)


# ----------------------------------------------------------------------------------------------
# Where it looks

def test_preference_within_a_folder(tmp_path):
    official, tree = make_dataset(seed=0), make_dataset(seed=10)
    write_tree(tmp_path, tree)
    write_tar(tmp_path / "mirror.tar.gz", tmp_path / "train", "train")
    assert data.data_source(tmp_path).path == str(tmp_path)          # a folder beats an archive
    write_official(tmp_path, official)
    assert_loads(tmp_path, official, "official")                      # the official release beats both


def test_search_order(tmp_path, monkeypatch):
    from_root, from_env, from_cache = (make_dataset(seed=s) for s in (0, 10, 20))
    write_tree(tmp_path / "root", from_root)
    write_tree(tmp_path / "env", from_env)
    write_official(tmp_path / "cache" / "data", from_cache)
    monkeypatch.setenv("LCNN_DATA", str(tmp_path / "env"))
    assert_loads(tmp_path / "root", from_root, "mirror")
    assert_loads(None, from_env, "mirror")
    assert_loads(tmp_path / "empty", from_env, "mirror")             # a root without data: go on
    monkeypatch.delenv("LCNN_DATA")
    assert_loads(None, from_cache, "official")


def test_offline_with_nothing_found_is_one_clear_error(tmp_path):
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load_cifar10("train", tmp_path / "nowhere")
    assert isinstance(caught.value, FileNotFoundError)
    message = str(caught.value)
    for needle in (str(tmp_path / "nowhere"), str(tmp_path / "cache" / "data"), "LCNN_DATA is not set",
                   "no network in tests", "export LCNN_DATA=", "internet"):
        assert needle in message


def test_downloads_when_nothing_is_found(tmp_path, monkeypatch):
    dataset = make_dataset()
    monkeypatch.setattr(data, "download_cifar10", lambda folder: write_official(folder, dataset))
    assert_loads(None, dataset, "official")
    assert data.data_source().path == str(tmp_path / "cache" / "data" / "cifar-10-batches-py")


# ----------------------------------------------------------------------------------------------
# The cache

def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("cifar10-*.npz"))


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    dataset = make_dataset()
    write_tree(tmp_path / "src", dataset)
    data.load_cifar10("train", tmp_path / "src")
    assert [f.name[:20] for f in cache_files(tmp_path / "src")] == ["cifar10-mirror-train"]

    def no_decoding(*args):
        raise AssertionError("decoded again although a cache exists")
    monkeypatch.setattr(data, "_decode", no_decoding)
    assert_loads(tmp_path / "src", {"train": dataset["train"]}, "mirror")


def test_a_changed_source_is_decoded_again(tmp_path):
    write_tree(tmp_path, make_dataset())
    data.load_cifar10("test", tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "test" / "cat" / "0001.png")
    images, labels = data.load_cifar10("test", tmp_path)
    assert len(images) == 11 and (labels == 3).sum() == 2


def test_read_only_source_caches_in_the_user_cache(tmp_path):
    dataset = make_dataset()
    write_tar(tmp_path / "shared" / "mirror.tar.gz", write_tree(tmp_path / "tree", dataset), ".")
    (tmp_path / "shared").chmod(0o555)                   # like /work/shared/data
    try:
        assert_loads(tmp_path / "shared", dataset, "mirror")
    finally:
        (tmp_path / "shared").chmod(0o755)
    assert cache_files(tmp_path / "shared") == []
    names = [f.name for f in cache_files(tmp_path / "cache" / "data")]
    assert len(names) == 2 and {n.split("-")[2] for n in names} == {"train", "test"}   # both in one pass


@pytest.mark.parametrize("damage", ["truncate", "garble", "wrong counts"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    dataset = make_dataset()
    write_tree(tmp_path, dataset)
    data.load_cifar10("train", tmp_path)
    [cache] = cache_files(tmp_path)
    raw = cache.read_bytes()
    if damage == "truncate":
        cache.write_bytes(raw[: len(raw) // 2])
    elif damage == "garble":
        middle = len(raw) // 2
        cache.write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 64]) + raw[middle + 64:])
    else:   # a well-formed file whose contents disagree with the counts recorded in it
        with np.load(cache) as npz:
            np.savez(cache.with_suffix(""), images=npz["images"][:-1], labels=npz["labels"][:-1],
                     counts=npz["counts"])
    with pytest.warns(UserWarning, match="damaged"):
        assert_loads(tmp_path, {"train": dataset["train"]}, "mirror")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # rebuilt: the next load is quiet
        assert_loads(tmp_path, {"train": dataset["train"]}, "mirror")


def test_cache_writes_leave_no_temporary_files(tmp_path):
    write_official(tmp_path, make_dataset())
    data.load_cifar10("train", tmp_path)
    assert len(cache_files(tmp_path)) == 2 and temp_files(tmp_path, tmp_path / "cache") == []


def test_a_failed_cache_write_leaves_nothing_behind(tmp_path, monkeypatch):
    dataset = make_dataset()
    write_official(tmp_path / "src", dataset)

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")
    monkeypatch.setattr(data.np, "savez", disk_full)
    with pytest.warns(UserWarning, match="could not save"):
        assert_loads(tmp_path / "src", dataset, "official")     # the data still loads
    assert cache_files(tmp_path / "src") == cache_files(tmp_path / "cache" / "data") == []
    assert temp_files(tmp_path / "src", tmp_path / "cache") == []


# ----------------------------------------------------------------------------------------------
# The real thing

def test_full_mirror(monkeypatch):
    if not REAL_ENV["LCNN_DATA"]:
        pytest.skip("LCNN_DATA is not set; point it at a folder holding the full CIFAR-10 "
                    "(e.g. the offline JPEG mirror) to check its 60,000 images")
    monkeypatch.setenv("LCNN_DATA", REAL_ENV["LCNN_DATA"])
    if REAL_ENV["LCNN_CACHE"]:
        monkeypatch.setenv("LCNN_CACHE", REAL_ENV["LCNN_CACHE"])
    else:
        monkeypatch.delenv("LCNN_CACHE")             # the real per-user cache: decode only once
    source = data.data_source()
    print(f"\nfull-dataset test uses: {source}")
    loaded = {split: data.load_cifar10(split) for split in ("train", "test")}   # slow the first time
    for split, (images, labels) in loaded.items():
        data.check_full_dataset(images, labels, split)
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8
        assert len(labels[:1000].unique()) == 10     # a prefix (as the smoke budget uses) has every class
    mean = loaded["train"][0].float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(data.CIFAR10_MEAN), atol=0.01)

    def no_decoding(*args):
        raise AssertionError("the full dataset was decoded again although a cache exists")
    monkeypatch.setattr(data, "_decode", no_decoding)
    images, labels = data.load_cifar10("train")
    assert torch.equal(labels, loaded["train"][1])


# ----------------------------------------------------------------------------------------------
# `make data`: the command line

def test_make_data_command_reports_the_splits_without_a_warning(tmp_path):
    """`python -m lcnn_lab data` (what `make data` runs) decodes, caches and reports, with no RuntimeWarning
    (`python -m lcnn_lab.data` printed one: the package imports `data` before runpy runs it)."""
    import subprocess
    import sys
    write_official(tmp_path / "data", make_dataset())
    env = dict(os.environ, LCNN_DATA=str(tmp_path / "data"), LCNN_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "lcnn_lab", "data"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr, run.stderr
    assert "CIFAR-10 train: 20 images (3, 32, 32), 10 classes" in run.stdout
    assert "CIFAR-10 test: 10 images" in run.stdout and "source:" in run.stdout
    assert list(tmp_path.rglob("cifar10-*.npz")), "nothing was cached"
