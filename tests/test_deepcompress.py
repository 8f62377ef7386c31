"""Deep Compression (lcnn_lab.deepcompress): Huffman coding against the textbook and the entropy, exact
round trips, k-means weight sharing that keeps zeros and trains centroids by Han et al.'s Eq. 3, and a
real compressed file of cifar_net that reads back bit for bit and shrinks stage after stage."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lcnn_lab import deepcompress as D
from lcnn_lab import models as M
from lcnn_lab import prune as P
from lcnn_lab.train import TrainConfig, train


# ----------------------------------------------------------------------------------------------
# Huffman coding

def test_huffman_code_lengths_of_the_textbook_example():
    """CLRS §16.3 (Fig. 16.4): a:45 b:13 c:12 d:16 e:9 f:5 (thousands) give lengths 1,3,3,3,4,4 and
    224 thousand bits in all, against 300 for a 3-bit fixed-length code."""
    freqs = dict(enumerate([45, 13, 12, 16, 9, 5]))
    code = D.huffman_code(freqs)
    assert code.lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    assert sum(f * code.lengths[s] for s, f in freqs.items()) == 224
    codes = list(code.codes.values())
    assert not any(a != b and b.startswith(a) for a in codes for b in codes)   # a prefix code
    assert sum(2.0 ** -len(c) for c in codes) == 1                             # complete (Kraft)


def test_huffman_reaches_the_entropy_for_dyadic_frequencies_and_stays_within_one_bit_otherwise():
    dyadic = {0: 8, 1: 4, 2: 2, 3: 1, 4: 1}                                    # probabilities 2^-k
    code = D.huffman_code(dyadic)
    assert code.lengths == {0: 1, 1: 2, 2: 3, 3: 4, 4: 4}
    assert code.average_bits(dyadic) == pytest.approx(D.entropy_bits(dyadic))
    rng = np.random.default_rng(0)
    for _ in range(20):
        freqs = dict(enumerate(rng.integers(1, 1000, size=rng.integers(2, 40)).tolist()))
        h, avg = D.entropy_bits(freqs), D.huffman_code(freqs).average_bits(freqs)
        assert h <= avg < h + 1


def test_huffman_is_optimal_against_every_code_of_small_alphabets():
    """For 3-4 symbols, enumerate every complete set of code lengths: Huffman's total is the least."""
    def complete_lengths(n, max_len=4):
        from itertools import product
        return [ls for ls in product(range(1, max_len + 1), repeat=n) if sum(2.0 ** -l for l in ls) == 1]
    rng = np.random.default_rng(1)
    for n in (3, 4):
        for _ in range(10):
            f = rng.integers(1, 50, size=n).tolist()
            best = min(sum(a * b for a, b in zip(f, ls)) for ls in complete_lengths(n))
            code = D.huffman_code(dict(enumerate(f)))
            assert sum(f[s] * code.lengths[s] for s in range(n)) == best


@pytest.mark.parametrize("kind", ["uniform", "skewed"])
def test_huffman_round_trip_is_exact(kind):
    rng = np.random.default_rng(2)
    symbols = (rng.integers(0, 100, 5000) if kind == "uniform"
               else np.minimum(rng.geometric(0.4, 5000) - 1, 200)).tolist()
    code = D.huffman_code(symbols)
    data = code.encode(symbols)
    assert code.decode(data, len(symbols)) == symbols
    assert len(data) == math.ceil(sum(code.lengths[s] for s in symbols) / 8)
    if kind == "skewed":   # a fixed-length code needs ceil(log2(alphabet)) bits per symbol
        fixed = math.ceil(math.log2(max(symbols) + 1)) * len(symbols) / 8
        assert len(data) < 0.6 * fixed


def test_huffman_edge_cases():
    one = D.huffman_code([7, 7, 7, 7, 7])
    assert one.lengths == {7: 1}
    assert one.decode(one.encode([7] * 5), 5) == [7] * 5
    empty = D.huffman_code([])
    assert empty.encode([]) == b"" and empty.decode(b"", 0) == []
    code = D.huffman_code({1: 3, 2: 1})
    with pytest.raises(ValueError, match="no codeword"):
        code.encode([1, 3])
    with pytest.raises(ValueError, match="ends after"):
        code.decode(code.encode([1, 2, 1]), 12)
    with pytest.raises(ValueError, match="must be an int >= 0"):
        D.huffman_code({-1: 3})
    with pytest.raises(ValueError, match="Kraft"):
        D.HuffmanCode({0: 1, 1: 1, 2: 1})


# ----------------------------------------------------------------------------------------------
# k-means weight sharing

@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    return P.prune_unstructured(M.create_model("cifar_net").eval(), 0.8)


@pytest.fixture(scope="module")
def shared(pruned):
    return D.share_weights(pruned, bits=4)


def test_kmeans_linear_init_finds_separated_groups():
    torch.manual_seed(0)
    centres = torch.tensor([-1.0, -0.2, 0.5, 2.0])
    values = (centres[:, None] + 0.01 * torch.randn(4, 50)).flatten()
    c, index = D.kmeans_1d(values, 4)
    torch.testing.assert_close(c, centres, atol=0.01, rtol=0)
    assert torch.equal(index, torch.arange(4).repeat_interleave(50))
    assert torch.allclose(c, c.sort().values)
    with pytest.raises(ValueError, match="init="):
        D.kmeans_1d(values, 4, init="kmeans++")


@pytest.mark.parametrize("bits", [2, 4])
def test_sharing_leaves_at_most_2_to_the_bits_values_and_keeps_zeros(pruned, bits):
    model = D.share_weights(pruned, bits=bits)
    layers = D.shared_layers(model)
    assert len(layers) == 8                                 # 7 convolutions and the head
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            before = P.masked_weight(pruned.get_submodule(name)).detach()
            after = m.weight.detach()
            assert torch.equal(after != 0, before != 0), name                   # same zeros
            assert len(torch.unique(after[after != 0])) <= 2 ** bits, name
            assert layers[name].clusters <= 2 ** bits
            # k-means converged: every weight went to its nearest centroid
            kept = before[before != 0]
            c = D.centroids(model)[name]
            nearest = (kept[:, None] - c[None, :]).abs().min(1).values
            torch.testing.assert_close((after[before != 0] - kept).abs(), nearest)
    assert pruned.get_submodule("head").weight_mask is not None               # the original is untouched


def test_centroid_gradient_is_the_sum_of_its_weights_gradients(shared):
    """han2016deep Eq. 3: dL/dC_k = sum of dL/dW_ij over the weights with index k."""
    model = copy.deepcopy(shared).eval()
    plain = D.bake(copy.deepcopy(shared)).eval()
    x = torch.randn(4, 3, 32, 32)
    model(x).square().sum().backward()
    plain(x).square().sum().backward()
    for name, p in D.shared_layers(model).items():
        w_grad = plain.get_submodule(name).weight.grad
        expected = torch.zeros(p.clusters).index_add_(0, p.index[p.mask], w_grad[p.mask])
        got = model.get_submodule(name).parametrizations.weight.original.grad
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # baking a copy left the original shared, with a weight (torch's deepcopy shares the layer's class)
    assert len(D.shared_layers(shared)) == 8 and shared.get_submodule("head").weight.shape == (10, 128)


def test_training_moves_centroids_but_not_the_assignment_or_the_zeros(shared):
    model = copy.deepcopy(shared)
    before = D.centroids(model)
    index = {n: p.index.clone() for n, p in D.shared_layers(model).items()}
    zeros = {n: model.get_submodule(n).weight.detach() == 0 for n in index}
    train(model, TrainConfig(budget="smoke", train_images=256, batch_size=64, eval_images=100,
                             history_eval_images=100, lr=0.01, bias_lr=1.0, progress=False, device="cpu"))
    after = D.centroids(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    for n, p in D.shared_layers(model).items():
        assert torch.equal(p.index, index[n])
        w = model.get_submodule(n).weight.detach()
        assert torch.equal(w == 0, zeros[n])
        assert set(torch.unique(w[w != 0]).tolist()) <= set(after[n].tolist())


def test_share_weights_checks_its_arguments(pruned, shared):
    with pytest.raises(ValueError, match="bits=9"):
        D.share_weights(pruned, bits=9)
    with pytest.raises(ValueError, match="no conv or linear layer named 'nope'"):
        D.share_weights(pruned, layers=["nope"])
    with pytest.raises(ValueError, match="already shares"):
        D.share_weights(shared)
    only_head = D.share_weights(pruned, bits={"head": 2})
    assert list(D.shared_layers(only_head)) == ["head"]


# ----------------------------------------------------------------------------------------------
# The compressed file

def test_file_round_trip_is_bit_exact(shared, tmp_path):
    sizes = D.save_compressed(shared, tmp_path / "m.lcdc")
    assert sizes["total"] == (tmp_path / "m.lcdc").stat().st_size
    assert sum(v for k, v in sizes.items() if k != "total") == sizes["total"]
    loaded = D.load_compressed(tmp_path / "m.lcdc", M.create_model("cifar_net")).eval()
    expected = D.bake(copy.deepcopy(shared)).state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert v.dtype == got[k].dtype, k
        a, b = v.contiguous(), got[k].contiguous()
        if a.dtype == torch.float32:                        # the same bits, +0.0 and -0.0 apart
            a, b = a.view(torch.int32), b.view(torch.int32)
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), shared.eval()(x))


@pytest.mark.parametrize("stage", ["dense", "pruned", "shared"])
def test_every_stage_reads_back_the_same_weights(pruned, shared, stage, tmp_path):
    model = {"dense": pruned, "pruned": pruned, "shared": shared}[stage]
    D.save_compressed(model, tmp_path / "m.lcdc", stage)
    got = D.read_compressed(tmp_path / "m.lcdc")
    for k, v in D._plain_state(model)[0].items():
        assert torch.equal(got[k], v), k                     # == : -0.0 of a pruned weight reads as 0.0


def test_long_gaps_use_escapes_and_read_back(tmp_path):
    """A linear layer stores 5-bit gaps: gaps of 31, 32, 62 and 70 positions need escape symbols."""
    layer = nn.Linear(200, 1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, [0, 31, 63, 125, 195, 199]] = torch.tensor([1.0, -2.0, 3.0, 1.0, -2.0, 0.5])
    for stage in ("pruned", "shared", "huffman"):
        D.save_compressed(layer, tmp_path / f"{stage}.lcdc", stage)
        assert torch.equal(D.read_compressed(tmp_path / f"{stage}.lcdc")["weight"], layer.weight.detach())
    symbols = D._gap_symbols(np.array([0, 31, 63, 125, 195, 199]), 5)
    assert symbols.tolist() == [1, 31, 0, 1, 0, 31, 0, 0, 8, 4]   # gap 70 = 31 + 31 + 8
    assert D._positions(symbols, 5).tolist() == [0, 31, 63, 125, 195, 199]


def test_storage_shrinks_stage_after_stage(pruned, shared, tmp_path):
    dense = M.create_model("cifar_net")
    s = D.measure_storage(dense, pruned, shared, tmp_path)
    assert s.dense > s.pruned > s.shared > s.huffman
    assert {p.name for p in tmp_path.iterdir()} == {f"{stage}.lcdc" for stage in D.STAGES}
    assert s.huffman == (tmp_path / "huffman.lcdc").stat().st_size
    params_and_buffers = sum(t.numel() * t.element_size() for t in dense.state_dict().values())
    assert params_and_buffers < s.dense < params_and_buffers + 2000          # raw float32 + names
    # pruning 80 % with 8-bit gaps: about 0.2 * (4 + 1) bytes per weight instead of 4
    assert 3.5 < s.ratio("pruned") < 4.5
    assert s.ratio("huffman") > 15
    assert list(s.table().index) == list(D.STAGES)


def test_loading_fails_loudly(shared, tmp_path):
    D.save_compressed(shared, tmp_path / "m.lcdc")
    with pytest.raises(ValueError, match="does not fit"):
        D.load_compressed(tmp_path / "m.lcdc", M.create_model("cifar_net", width=0.5))
    with pytest.raises(ValueError, match="plain model"):
        D.load_compressed(tmp_path / "m.lcdc", shared)
    (tmp_path / "x.lcdc").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an lcnn_lab compressed model"):
        D.read_compressed(tmp_path / "x.lcdc")
    with pytest.raises(ValueError, match="stage="):
        D.save_compressed(shared, tmp_path / "m.lcdc", stage="zip")


def test_deep_compression_pipeline_is_stored_with_its_files(tmp_path, monkeypatch):
    from lcnn_lab import deepcompress as DC
    from lcnn_lab.models import create_model
    from lcnn_lab.results import ResultsStore
    monkeypatch.setenv("LCNN_BUDGET", "smoke")
    store = ResultsStore(tmp_path)
    base = create_model("cifar_net", width=0.25)
    run = DC.deep_compression(base, amount=0.8, bits=3, finetune_epochs=0.1, eval_images=200, store=store)
    stages = [r["stage"] for r in run["stages"]]
    assert stages == ["dense", "pruned", "pruned", "shared", "shared", "huffman"]
    sizes = {r["stage"]: r["bytes"] for r in run["stages"]}
    assert sizes["dense"] > sizes["pruned"] > sizes["shared"] > sizes["huffman"]
    assert run["exact_round_trip"] and all(p.exists() for p in run["paths"].values())
    # the stored Huffman file is the final model: decoding it gives the accuracy recorded for it
    final = DC.load_compressed(run["paths"]["huffman"], create_model("cifar_net", width=0.25))
    from lcnn_lab.train import evaluate
    assert evaluate(final, n=200).value == run["stages"][-1]["accuracy"]
    monkeypatch.setattr("lcnn_lab.train.train", lambda *a, **k: pytest.fail("a stored run must not train"))
    again = DC.deep_compression(base, amount=0.8, bits=3, finetune_epochs=0.1, eval_images=200, store=store)
    assert again["stages"] == run["stages"]
    with pytest.raises(ValueError, match="amount"):
        DC.deep_compression(base, amount=1.0, store=store)
