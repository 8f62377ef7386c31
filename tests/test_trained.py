"""Trained models kept once: checkpoints, the results store's keys, fine-tunes keyed by the base's content."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import lcnn_lab
import lcnn_lab.train as T
import lcnn_lab.trained as TR
from lcnn_lab import config, results, trained
from lcnn_lab.config import get_device
from lcnn_lab.data import data_source
from lcnn_lab.models import create_model
from lcnn_lab.results import ResultsStore, make_key
from lcnn_lab.train import TrainConfig

SMALL = {"width": 0.25}
NO_CAP = 1e9   # no wall-clock cap (None would mean "the budget's"), so a loaded machine trains the same
TINY = TrainConfig(budget="smoke", epochs=1, train_images=512, eval_images=200, max_seconds=NO_CAP,
                   history_eval_images=200, progress=False)


def test_state_hash_follows_the_weights_not_the_object():
    a = create_model("cifar_net", **SMALL)
    b = copy.deepcopy(a)
    assert trained.state_hash(a) == trained.state_hash(b)
    with torch.no_grad():
        next(b.parameters())[0].view(-1)[0] += 1e-6
    assert trained.state_hash(a) != trained.state_hash(b)
    b.load_state_dict(a.state_dict())
    assert trained.state_hash(a) == trained.state_hash(b)
    bn = next(m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean += 1                                      # buffers count too: they change the outputs
    assert trained.state_hash(a) != trained.state_hash(b)


def test_finetune_is_stored_under_the_base_hash_and_never_recomputed(tmp_path):
    store = ResultsStore(tmp_path)
    base = create_model("cifar_net", **SMALL)
    calls = []

    def halve_first_conv(m):
        calls.append(1)
        with torch.no_grad():
            next(m.parameters()).mul_(0.5)
        return m

    first = trained.finetune(base, halve_first_conv, TINY, what={"halve": "first conv"}, eval_images=200,
                             store=store)
    assert calls == [1] and first.after.n == 200 and first.seconds > 0
    assert first.params == lcnn_lab.profile.count_params(base)
    before_weights = copy.deepcopy(base.state_dict())
    again = trained.finetune(base, halve_first_conv, TINY, what={"halve": "first conv"}, eval_images=200,
                             store=store)
    assert calls == [1] and again.after == first.after                 # read back, not recomputed
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before_weights.items())   # base untouched
    other = create_model("cifar_net", **SMALL, kernel_size=5)       # another base: another entry
    trained.finetune(other, halve_first_conv, TINY, what={"halve": "first conv"}, eval_images=200, store=store)
    assert calls == [1, 1]
    (entry,) = [e for e in store.entries("finetune") if e["key"]["base"] == trained.state_hash(base)]
    assert entry["key"]["what"] == {"halve": "first conv"}
    assert entry["key"]["format"] == results.measurement_format("finetune")
    with pytest.raises(TypeError, match="transform must return"):
        trained.finetune(base, lambda m: None, TINY, what="nothing", store=ResultsStore(tmp_path / "x"))
    with pytest.raises(ValueError, match="no fine-tune recipe 'prnue'; the recipes are prune, fake_quant"):
        trained.finetune(base, "prnue", TINY, {"amount": 0.5}, store=store)
    with pytest.raises(ValueError, match="needs what="):
        trained.finetune(base, halve_first_conv, TINY, store=store)


def test_keys_carry_the_measurement_format_not_the_package_version(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    key = make_key("train", model="m")
    assert "version" not in key and key["format"] == results.measurement_format("train")
    store.put(key, {"accuracy": 0.5})
    monkeypatch.setattr(lcnn_lab, "__version__", "9.9.9")           # a release keeps every result
    assert store.get(make_key("train", model="m"))["metrics"] == {"accuracy": 0.5}
    monkeypatch.setitem(results.MEASUREMENT_FORMATS, "train", results.MEASUREMENT_FORMATS["train"] + 1)
    # ... and a changed measurement does not
    assert store.get(make_key("train", model="m")) is None


def test_a_stored_entry_names_no_folder_of_the_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path))
    model, result = trained.train_model("cifar_net", TINY, **SMALL)
    (path,) = (tmp_path / "train").glob("*.json")
    text = path.read_text()
    entry = json.loads(text)
    data = lcnn_lab.data.data_source()
    assert entry["provenance"]["data"] == data.kind and entry["provenance"]["data_sha256"] == data.checksum
    assert len(data.checksum) == 64
    for folder in {str(config.REPO_ROOT), data.path, str(config.cache_dir()), str(tmp_path)}:
        assert folder not in text
    got = trained.trained_accuracy("cifar_net", TINY, compute=False, **SMALL)
    assert got["accuracy"] == result.accuracy.value


def test_a_checkpoint_of_another_format_is_retrained_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path))
    monkeypatch.setenv("LCNN_BUDGET", "smoke")
    path = trained.checkpoint_path("cifar_net", "smoke", SMALL)
    model = create_model("cifar_net", **SMALL)
    trained.save_checkpoint(path, model, "cifar_net", SMALL, {"accuracy": 0.1})
    assert trained.load_checkpoint(path, create_model("cifar_net", **SMALL)) == {"accuracy": 0.1}
    fmt = results.measurement_format("checkpoint")
    monkeypatch.setitem(results.MEASUREMENT_FORMATS, "checkpoint", 99)
    with pytest.warns(UserWarning, match=f"checkpoint format {fmt}, this lcnn_lab reads format 99"):
        assert trained.load_checkpoint(path, create_model("cifar_net", **SMALL)) is None


# ----------------------------------------------------------------------------------------------
# Moved from test_train.py with train_model and pretrained

FAST = T.TrainConfig(budget="smoke", epochs=2, train_images=2_000, eval_images=1_000, max_seconds=NO_CAP,
                     batch_size=128, progress=False, history_eval_images=500)


@pytest.fixture
def store(tmp_path, monkeypatch) -> ResultsStore:
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path / "results"))
    return ResultsStore()


def test_train_model_records_in_store(store):
    model, result = TR.train_model("cifar_net", FAST, store=store, **SMALL)
    got = TR.trained_accuracy("cifar_net", FAST, store=store, compute=False, **SMALL)
    assert got["accuracy"] == result.accuracy.value and got["budget"] == "smoke"
    assert got["data"] == data_source().kind and got["data_sha256"] == data_source().checksum
    assert got["device"] == result.device == str(get_device())
    assert TR.trained_accuracy("cifar_net", FAST, store=store, compute=False, width=0.5) is None


def test_pretrained_caches_with_provenance_and_rejects_bad_checkpoints(store, monkeypatch):
    monkeypatch.setenv("LCNN_BUDGET", "smoke")
    calls = []
    real_train = T.train
    monkeypatch.setattr(TR, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    m1 = TR.pretrained("cifar_net", **SMALL)
    prov = m1.provenance
    for field in ("data", "data_sha256", "budget", "device", "seconds", "accuracy", "lcnn_lab", "torch"):
        assert field in prov
    assert prov["budget"] == "smoke" and len(calls) == 1
    path = TR.checkpoint_path("cifar_net", "smoke", SMALL)
    assert path.exists()

    m2 = TR.pretrained("cifar_net", **SMALL)  # loaded, not retrained
    assert len(calls) == 1 and m2.provenance == prov
    for pa, pb in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(pa.cpu(), pb.cpu())

    path.write_bytes(path.read_bytes()[:100])  # truncated: retrained with a warning
    with pytest.warns(UserWarning, match="cannot be used"):
        TR.pretrained("cifar_net", **SMALL)
    assert len(calls) == 2

    ckpt = torch.load(path, weights_only=True)  # of another measurement format: retrained
    ckpt["format"] = 0
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match="checkpoint format 0"):
        TR.pretrained("cifar_net", **SMALL)
    assert len(calls) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TR.pretrained("cifar_net", **SMALL)  # the retrained file is good again
    assert len(calls) == 3


def test_remeasure_trains_the_store_again_under_the_current_code(tmp_path, monkeypatch):
    """`make results`: a trainer change (its format bumped) re-measures every entry and drops the old."""
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path))
    monkeypatch.setenv("LCNN_BUDGET", "smoke")
    tiny = {"width": 0.25}
    base = TR.pretrained("cifar_net", "smoke", **tiny)                      # a checkpoint + its train entry
    TR.trained_accuracy("cifar_net", TrainConfig(budget="smoke", progress=False), kernel_size=5, **tiny)
    cfg = TrainConfig(epochs=0.25, lr=0.02, progress=False)
    TR.finetune(base, "prune", cfg, {"granularity": "weight", "scope": "global", "amount": 0.5}, eval_images=200)
    TR.finetune(base, lambda m: m, cfg, what={"notebook's own": "change"}, eval_images=200)
    store = ResultsStore()
    before = {kind: sorted(p.name for p in (tmp_path / kind).iterdir()) for kind in ("train", "finetune", "checkpoints")}
    assert [len(v) for v in before.values()] == [2, 2, 1]

    assert TR.remeasure(store, progress=False) == {"trainings": 0, "checkpoints": 0, "finetunes": 0, "deleted": 0}
    for kind in ("train", "checkpoint", "finetune"):
        monkeypatch.setitem(results.MEASUREMENT_FORMATS, kind, results.MEASUREMENT_FORMATS[kind] + 1)
    done = TR.remeasure(store, progress=False)
    assert done == {"trainings": 1, "checkpoints": 1, "finetunes": 1, "deleted": 4}   # 2 trains, 1 tune, 1 file
    after = {kind: sorted(p.name for p in (tmp_path / kind).iterdir()) for kind in ("train", "finetune", "checkpoints")}
    assert [len(v) for v in after.values()] == [2, 2, 1]
    assert not set(after["train"]) & set(before["train"]) and not set(after["checkpoints"]) & set(before["checkpoints"])
    kept = [e for e in store.entries("finetune") if "recipe" not in e["key"]["what"]]
    assert len(kept) == 1                       # a notebook's own function: kept for the notebook to redo
    assert all(e["key"]["format"] == results.MEASUREMENT_FORMATS["train"] for e in store.entries("train"))


def test_remeasure_leaves_alone_what_others_write_while_it_runs(tmp_path, monkeypatch):
    """Another process may train a new chapter's grid into the store during `make results`: those
    entries are not stale, and must survive the clean-up at the end."""
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path))
    monkeypatch.setenv("LCNN_BUDGET", "smoke")
    TR.trained_accuracy("cifar_net", TrainConfig(budget="smoke", progress=False), width=0.25)
    store = ResultsStore()
    monkeypatch.setitem(results.MEASUREMENT_FORMATS, "train", results.MEASUREMENT_FORMATS["train"] + 1)
    real_train = TR.train_model

    def train_and_a_neighbour(*args, **kwargs):
        (tmp_path / "train" / "written-meanwhile.json").write_text("{}")   # what the other process stored
        return real_train(*args, **kwargs)

    monkeypatch.setattr(TR, "train_model", train_and_a_neighbour)
    done = TR.remeasure(store, progress=False)
    assert done["trainings"] == 1 and done["deleted"] == 1                 # the stale entry only
    assert (tmp_path / "train" / "written-meanwhile.json").exists()


def test_remeasure_keeps_what_a_chapter_chose_to_train(tmp_path, monkeypatch):
    """A low-fidelity training (chapter 06: a subset of the images, fewer test images) is trained again
    as such, not as the budget's default training."""
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path))
    low = TrainConfig(budget="smoke", train_images=300, eval_images=200, progress=False)
    TR.trained_accuracy("cifar_net", low, width=0.25)
    store = ResultsStore()
    monkeypatch.setitem(results.MEASUREMENT_FORMATS, "train", results.MEASUREMENT_FORMATS["train"] + 1)
    assert TR.remeasure(store, progress=False)["trainings"] == 1
    (entry,) = store.entries("train")
    assert entry["key"]["train"]["train_images"] == 300 and entry["key"]["train"]["eval_images"] == 200
    assert entry["metrics"]["eval_images"] == 200
