"""The results store: atomic, interruption-safe, tolerant of corrupt entries and concurrent writers."""
import json
import multiprocessing as mp
import os

import pytest

from lcnn_lab.results import ResultsStore, make_key


def test_roundtrip_and_key_normalisation(tmp_path):
    store = ResultsStore(tmp_path)
    key = make_key("train", model="cifar_net", knobs={"width": 1.0, "groups": 2})
    assert store.get(key) is None
    store.put(key, {"accuracy": 0.5}, {"device": "cpu"})
    same = make_key("train", model="cifar_net", knobs={"groups": 2, "width": 1})  # order and 1 vs 1.0
    entry = store.get(same)
    assert entry["metrics"] == {"accuracy": 0.5} and entry["provenance"]["device"] == "cpu"
    assert store.get(make_key("train", model="cifar_net", knobs={"groups": 4, "width": 1})) is None
    assert len(store) == 1


def test_get_or_compute_computes_once(tmp_path):
    store, calls = ResultsStore(tmp_path), []
    key = make_key("latency", model="x")
    for _ in range(3):
        entry = store.get_or_compute(key, lambda: calls.append(1) or ({"ms": 1.5}, {"threads": 2}))
    assert calls == [1] and entry["metrics"]["ms"] == 1.5


def test_interrupted_write_keeps_old_entry_and_leaves_no_temp_file(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    key = make_key("train", model="m")
    store.put(key, {"accuracy": 0.7})

    def interrupted(src, dst):  # Ctrl-C arrives between writing the temp file and renaming it
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.put(key, {"accuracy": 0.9})
    monkeypatch.undo()
    assert store.get(key)["metrics"]["accuracy"] == 0.7
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [store.path(key).name]


@pytest.mark.parametrize("garbage", [b"", b"{\"format\": 1, \"metr", b"\x00\xff\x00", b"[1, 2]"])
def test_corrupt_entry_is_skipped_with_a_warning(tmp_path, garbage):
    store = ResultsStore(tmp_path)
    good, bad = make_key("train", model="good"), make_key("train", model="bad")
    store.put(good, {"accuracy": 0.8})
    store.put(bad, {"accuracy": 0.1})
    store.path(bad).write_bytes(garbage)
    with pytest.warns(UserWarning, match="unreadable entry"):
        assert store.get(bad) is None
    with pytest.warns(UserWarning, match="unreadable entry"):
        assert [e["key"]["model"] for e in store.entries("train")] == ["good"]
    store.put(bad, {"accuracy": 0.2})  # recomputed and stored again
    assert store.get(bad)["metrics"]["accuracy"] == 0.2


def _writer(root, worker, n):
    store = ResultsStore(root)
    for i in range(n):
        store.put(make_key("train", model="shared", i=i % 5), {"worker": worker, "i": i})
        store.put(make_key("train", model=f"own{worker}", i=i), {"worker": worker, "i": i})


def test_two_processes_writing_at_once_do_not_corrupt(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ResultsStore(tmp_path)
    entries = list(store.entries())  # any unreadable file would warn, and -W error would fail here
    assert len(entries) == 5 + 2 * 40
    for path in tmp_path.rglob("*.json"):
        json.loads(path.read_text())
