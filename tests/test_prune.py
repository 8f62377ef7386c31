"""Pruning: exact sparsity that survives fine-tuning, filter pruning that really shrinks the model."""
import copy
import dataclasses
import io
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import lcnn_lab.train as T
from lcnn_lab import prune as P
from lcnn_lab.config import seed_everything
from lcnn_lab.layers import DESIGNS, KERNEL_SIZES, check_kernel_size
from lcnn_lab.models import create_model
from lcnn_lab.profile import count_macs, count_params, model_size_bytes

SMALL = dict(width=0.25)
# A few optimizer steps on a small slice of real CIFAR-10: enough for momentum and weight decay to act.
TINY = T.TrainConfig(budget="smoke", epochs=2, train_images=512, eval_images=100, max_seconds=None,
                     batch_size=128, progress=False, history_eval_images=100)


def small_model(seed: int = 0, **knobs) -> nn.Module:
    seed_everything(seed)
    return create_model("cifar_net", **{**SMALL, **knobs})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: P.masked_weight(m).detach().clone() for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if hasattr(m, "weight_mask")}


def sgd_steps(model: nn.Module, steps: int = 3) -> None:
    """A few SGD steps (Nesterov momentum, weight decay) on random data; no forward pass after the last."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in range(steps):
        model(torch.randn(4, 3, 32, 32)).square().mean().backward()
        opt.step()
        opt.zero_grad()


def saved_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


# ----------------------------------------------------------------------------------------------
# Unstructured pruning

@pytest.mark.parametrize("amount", [0.0, 0.1, 0.333, 0.5, 0.9, 1.0])
def test_layerwise_pruning_reaches_the_asked_sparsity_exactly(amount):
    model = small_model()
    pruned = P.prune_unstructured(model, amount, scope="layer")
    for layer in P.sparsity_report(pruned).layers:
        assert layer.zeros == round(amount * layer.total), layer
    assert P.sparsity(model) == 0.0   # the original is untouched


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.77])
def test_global_pruning_reaches_the_asked_sparsity_exactly(amount):
    model = small_model()
    pruned = P.prune_unstructured(model, amount, scope="global")
    report = P.sparsity_report(pruned)
    assert report.zeros == round(amount * report.total)
    # global ranking prunes layers unevenly (it is not the layer-wise result in disguise)
    spread = [layer.sparsity for layer in report.layers]
    assert max(spread) - min(spread) > 0.1
    # and it removes exactly the smallest magnitudes: every kept weight >= every pruned one
    before, after = weights(model), weights(pruned)
    kept = torch.cat([before[n][after[n] != 0].abs() for n in before])
    gone = torch.cat([before[n][after[n] == 0].abs() for n in before])
    assert kept.min() >= gone.max()


def test_ties_are_broken_deterministically_and_exactly():
    layer = nn.Linear(10, 10, bias=False)
    nn.init.constant_(layer.weight, 0.5)             # 100 equal magnitudes
    model = nn.Sequential(layer)
    a = P.prune_unstructured(model, 0.37)
    b = P.prune_unstructured(model, 0.37)
    assert int((a[0].weight == 0).sum()) == 37
    assert torch.equal(a[0].weight_mask, b[0].weight_mask)


def test_fine_tuning_keeps_pruned_weights_at_zero():
    pruned = P.prune_unstructured(small_model(), 0.6, scope="global")
    mask_before = {n: m.weight_mask.clone() for n, m in pruned.named_modules() if hasattr(m, "weight_mask")}
    before = weights(pruned)
    T.train(pruned, TINY)   # SGD + Nesterov momentum + weight decay, channels_last
    after = weights(pruned)
    for name, mask in mask_before.items():
        assert torch.equal(after[name][mask == 0], torch.zeros_like(after[name][mask == 0])), name
        assert not torch.equal(after[name][mask == 1], before[name][mask == 1]), f"{name} did not train"
    report = P.sparsity_report(pruned)
    assert report.zeros == round(0.6 * report.total)
    assert count_params(pruned, nonzero=True) == count_params(pruned) - report.zeros


def test_fine_tuning_decays_pruned_weights_like_unpruned_ones():
    pruned = P.prune_unstructured(small_model(), 0.5)
    decayed = {id(p) for p in T._param_groups(pruned, 0.1, 5e-4, 1.0)[0]["params"]}
    assert all(id(m.weight_orig) in decayed for m in masked_layers(pruned).values())


def test_a_copy_of_a_pruned_model_keeps_its_zeros_while_training():
    # the copy must carry the masks: its new parameters are masked as the original's are
    pruned = copy.deepcopy(P.prune_unstructured(small_model(), 0.5))
    T.train(pruned, TINY, ema=0.9)   # the EMA is another deepcopy inside train()
    report = P.sparsity_report(pruned)
    assert report.zeros == sum(round(0.5 * layer.total) for layer in report.layers)


def test_masks_are_torch_prune_reparametrisations():
    model = small_model()
    pruned = P.prune_unstructured(model, 0.5)
    assert torch_prune.is_pruned(pruned) and not torch_prune.is_pruned(model)
    layers = masked_layers(pruned)
    assert list(layers) == [n for n, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for name, m in layers.items():
        assert isinstance(m.weight_orig, nn.Parameter) and "weight" not in dict(m.named_parameters())
        assert torch.equal(m.weight, m.weight_orig * m.weight_mask), name
    zeros = P.sparsity_report(pruned).zeros
    assert count_params(pruned, nonzero=True) == count_params(model, nonzero=True) - zeros
    assert count_params(pruned) == count_params(model)


def test_pruned_weights_stay_zero_between_optimizer_steps():
    # Read right after opt.step(), with no forward pass in between: torch's pruning recomputes
    # `weight` only before a forward pass, so read what the next one will use (masked_weight).
    pruned = P.prune_unstructured(small_model(), 0.5)
    before = weights(pruned)
    sgd_steps(pruned)
    after = weights(pruned)
    for name, m in masked_layers(pruned).items():
        assert torch.equal(after[name], m.weight_orig.detach() * m.weight_mask), name
        assert not after[name][m.weight_mask == 0].any(), name
        assert not torch.equal(after[name], before[name]), f"{name} did not train"
    assert P.sparsity(pruned) == pytest.approx(0.5, abs=1e-3)


def test_a_pruned_model_can_be_copied_after_training():
    # torch's pruning leaves `weight` with autograd history after a training step, which
    # copy.deepcopy cannot copy; the copy must work and be a pruned model of its own.
    pruned = P.prune_unstructured(small_model(), 0.5)
    sgd_steps(pruned)
    twin = copy.deepcopy(pruned)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(twin(x), pruned(x))
    assert torch_prune.is_pruned(twin)
    sgd_steps(twin)    # the copy trains on its own parameters and keeps its zeros
    assert P.sparsity(twin) == P.sparsity(pruned)
    assert not torch.equal(twin.head.weight_orig, pruned.head.weight_orig)


def test_pruning_again_only_adds_zeros():
    once = P.prune_unstructured(small_model(), 0.5)
    twice = P.prune_unstructured(once, 0.8)
    for n, m in twice.named_modules():
        if hasattr(m, "weight_mask"):
            old = dict(once.named_modules())[n].weight_mask
            assert torch.all(m.weight_mask <= old), n   # every old zero is still pruned
    assert P.sparsity(twice) == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="already 50.0% pruned"):
        P.prune_unstructured(once, 0.3)


def test_remove_masks_gives_an_ordinary_model():
    pruned = P.prune_unstructured(small_model(), 0.5)
    sgd_steps(pruned)                      # the masked weights are newer than `weight` now
    expected = weights(pruned)
    assert P.remove_masks(pruned) is pruned and not torch_prune.is_pruned(pruned)
    for name, w in weights(pruned).items():
        assert torch.equal(w, expected[name]), name
    fresh = small_model(seed=1)
    fresh.load_state_dict(pruned.state_dict())   # no weight_orig or weight_mask keys left
    assert P.sparsity_report(fresh).zeros == P.sparsity_report(pruned).zeros > 0
    assert not any(pruned.stem[0]._forward_hooks.values())
    copy.deepcopy(pruned)                  # an ordinary model, after training too


def test_pruning_only_the_named_layers():
    pruned = P.prune_unstructured(small_model(), 0.5, layers=["stage2.conv1"])
    by_layer = P.sparsity_report(pruned).by_layer()
    assert by_layer["stage2.conv1"] == pytest.approx(0.5, abs=1e-3)
    assert all(v == 0 for k, v in by_layer.items() if k != "stage2.conv1")
    with pytest.raises(ValueError, match="no conv or linear layer named 'stage9'"):
        P.prune_unstructured(small_model(), 0.5, layers=["stage9"])


def test_copy_mask_prunes_a_new_layer_the_same_way():
    src = P.prune_unstructured(nn.Sequential(nn.Linear(8, 4)), 0.5)[0]
    dst = nn.Linear(8, 4)
    assert P.copy_mask(src, dst) is dst and torch_prune.is_pruned(dst)
    assert torch.equal(dst.weight_mask, src.weight_mask) and dst.weight_mask is not src.weight_mask
    assert int((dst.weight == 0).sum()) == 16
    plain = nn.Linear(8, 4)
    assert not torch_prune.is_pruned(P.copy_mask(nn.Linear(8, 4), plain))   # nothing to copy
    with pytest.raises(ValueError, match="same weight shape"):
        P.copy_mask(src, nn.Linear(8, 5))


@pytest.mark.parametrize("amount", [-0.1, 1.5, "half", True])
def test_bad_amounts_fail_in_words(amount):
    with pytest.raises(ValueError, match="must be a fraction in"):
        P.prune_unstructured(small_model(), amount)


# ----------------------------------------------------------------------------------------------
# Storage of sparse weights

def test_dense_storage_is_model_size_and_sparse_formats_pay_for_indices():
    model = small_model()
    assert P.storage_bytes(model, "dense") == model_size_bytes(model)
    # unpruned: CSR costs values + indices, about twice dense
    assert P.storage_bytes(model, "csr") > 1.9 * P.storage_bytes(model, "dense")
    pruned = P.prune_unstructured(model, 0.9)
    assert P.storage_bytes(pruned, "dense") == P.storage_bytes(model, "dense")   # zeros still stored
    assert P.storage_bytes(pruned, "csr") < 0.3 * P.storage_bytes(pruned, "dense")
    assert P.storage_bytes(pruned, "bitmask") < P.storage_bytes(pruned, "dense")
    assert P.break_even_sparsity("csr", 32, 32) == 0.5
    assert P.break_even_sparsity("bitmask", 8) == 1 / 8


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_csr_formula_matches_torch_sparse_csr():
    layer = nn.Linear(64, 32, bias=False)
    pruned = P.prune_unstructured(nn.Sequential(layer), 0.7)
    csr = pruned[0].weight.detach().to_sparse_csr()
    torch_bytes = sum(t.numel() * t.element_size()
                      for t in (csr.values(), csr.crow_indices(), csr.col_indices()))
    assert P.storage_bytes(pruned, "csr", bits=32, index_bits=64) == torch_bytes


# ----------------------------------------------------------------------------------------------
# Structured (filter) pruning

def test_filter_pruning_really_shrinks_the_model():
    model = create_model("cifar_net")
    pruned = P.prune_filters(model, 0.5)
    # halving every layer's filters gives exactly the width=0.5 architecture
    half = create_model("cifar_net", width=0.5)
    assert count_params(pruned) == count_params(half) < count_params(model) / 3
    assert count_macs(pruned).total == count_macs(half).total < count_macs(model).total / 3
    assert saved_bytes(pruned) < saved_bytes(model) / 3
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)][-1] == 128  # untouched


def test_removing_dead_filters_does_not_change_the_output():
    # Filters that output exactly 0 (zero weights, BatchNorm shift 0) contribute nothing: removing
    # them, with their BatchNorm channels and the next layer's inputs, must leave the logits unchanged.
    model = small_model().eval()
    with torch.no_grad():
        for g in P.filter_groups(model):
            dead = torch.arange(g.conv.out_channels) % 4 == 0
            g.conv.weight[dead] = 0
            for bn in g.norms:
                bn.bias[dead] = 0
                bn.running_mean[dead] = 0
    pruned = P.prune_filters(model, 0.25)
    for g in P.filter_groups(pruned):
        assert g.conv.out_channels == round(0.75 * dict(model.named_modules())[g.name].out_channels)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(pruned(x), model(x))


def test_global_filter_pruning_removes_the_asked_count_and_keeps_every_layer():
    model = small_model()
    total = sum(g.conv.out_channels for g in P.filter_groups(model))
    pruned = P.prune_filters(model, 0.6, importance=P.MagnitudeImportance(normalize=True), scope="global")
    kept = [g.conv.out_channels for g in P.filter_groups(pruned)]
    assert sum(kept) == total - round(0.6 * total) and min(kept) >= 1
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_slimming_removes_the_smallest_batchnorm_scales():
    model = small_model()
    with torch.no_grad():
        stem_bn = model.stem[1]
        stem_bn.weight.copy_(torch.linspace(1, 2, stem_bn.num_features))
        stem_bn.weight[[1, 5]] = 1e-3    # the two least important channels of the stem
    pruned = P.prune_filters(model, 0.25, importance=P.BNScaleImportance(), layers=["stem.0"])
    assert pruned.stem[0].out_channels == stem_bn.num_features - 2
    kept = pruned.stem[1].weight.detach()
    assert kept.min() >= 1 and torch.equal(kept, torch.cat([stem_bn.weight[[0]], stem_bn.weight[2:5],
                                                             stem_bn.weight[6:]]).detach())
    assert P.slim(model, 0.3)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_a_new_criterion_in_a_few_lines():
    class LastFilters(P.Importance):   # what a notebook exercise would write
        def __call__(self, group):
            return -torch.arange(group.conv.out_channels, dtype=torch.float)
    pruned = P.prune_filters(small_model(), 0.5, importance=LastFilters(), layers=["stem.0"])
    assert pruned.stem[0].out_channels == 4


@pytest.mark.parametrize("design", ["stacked", "factorized", "bottleneck"])
def test_filter_pruning_handles_every_groups1_design(design):
    model = small_model(design=design, kernel_size=5)
    pruned = P.prune_filters(model, 0.5)
    assert count_params(pruned) < count_params(model) / 2.5
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("groups", [2, "depthwise"])
def test_group_convolutions_are_refused_in_words(groups):
    with pytest.raises(ValueError, match=r"supports standard convolutions \(groups=1\).*groups="):
        P.prune_filters(create_model("cifar_net", groups=groups), 0.5)


def test_filter_pruned_model_fine_tunes():
    # From a seeded init, so the fine-tune must do the learning: 64 small steps lift accuracy on the
    # training subset from chance (8 %) to about 22 %. No time cap: every machine runs all 64 steps.
    pruned = P.prune_filters(small_model(width=0.5), 0.5)
    cfg = dataclasses.replace(TINY, batch_size=16, max_seconds=math.inf)
    on_its_subset = dict(split="train", n=cfg.train_images, seed=cfg.seed)   # the images train() uses
    before_weights, before = weights(pruned), T.evaluate(pruned, **on_its_subset)
    result = T.train(pruned, cfg)
    after = T.evaluate(pruned, **on_its_subset)
    for name, w in weights(pruned).items():
        assert not torch.equal(w, before_weights[name]), f"{name} did not train"
    assert result.accuracy.n == cfg.eval_images
    assert after.value > before.value + 0.05, f"fine-tuning went from {before} to {after}"


class FirstFilters(P.Importance):
    """Keeps the first filters of every layer, so the expected result is easy to write down."""
    def __call__(self, group):
        return -torch.arange(group.conv.out_channels, dtype=torch.float)


def test_filter_pruning_a_weight_pruned_model_slices_its_masks():
    once = P.prune_unstructured(small_model(), 0.5)
    thinner = P.prune_filters(once, 0.5, importance=FirstFilters())
    old = masked_layers(once)
    assert list(masked_layers(thinner)) == list(old)
    for name, m in masked_layers(thinner).items():
        c_out, c_in = m.weight.shape[:2]
        assert torch.equal(m.weight_mask, old[name].weight_mask[:c_out, :c_in]), name
        assert torch.equal(m.weight, old[name].weight[:c_out, :c_in]), name
    sgd_steps(thinner)   # the sliced masks still hold, and prune again as usual
    assert all(not P.masked_weight(m)[m.weight_mask == 0].any() for m in masked_layers(thinner).values())
    assert P.sparsity(P.prune_unstructured(thinner, 0.7)) == pytest.approx(0.7, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# Cross-check: Torch-Pruning's dependency graph ties the same layers together

def _designs_and_kernel_sizes():
    # the designs of chapter 01; a Ghost module (grouped cheap convs, a concatenation cut to c_out) and
    # an adder layer (no nn.Conv2d) are not filter-pruned by lcnn_lab.prune
    for design in (d for d in DESIGNS if d in ("single", "stacked", "factorized", "bottleneck")):
        for k in KERNEL_SIZES:
            try:
                check_kernel_size(k, design)
            except ValueError:
                continue
            yield design, k


@pytest.mark.parametrize("design,kernel_size", list(_designs_and_kernel_sizes()))
def test_filter_groups_agree_with_torch_pruning(design, kernel_size):
    tp = pytest.importorskip("torch_pruning")
    model = create_model("cifar_net", design=design, kernel_size=kernel_size, groups=1, shuffle=False,
                         width=0.25)
    names = {m: n for n, m in model.named_modules()}
    groups = P.filter_groups(model)
    # with groups=1 every convolution's filters can be removed, whatever the design
    assert [g.name for g in groups] == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    out_fns = {tp.prune_conv_out_channels, tp.prune_batchnorm_out_channels}
    in_fns = {tp.prune_conv_in_channels, tp.prune_linear_in_channels}
    for g in groups:
        ours = ({(g.name, "out")} | {(names[bn], "out") for bn in g.norms}
                | {(n, "in") for n, _ in g.consumers})
        theirs = set()
        for item in graph.get_pruning_group(g.conv, tp.prune_conv_out_channels, idxs=[0]).items:
            module, fn = item.dep.target.module, item.dep.handler
            if module in names:   # activations, pooling and flatten have no parameters to prune
                assert fn in out_fns | in_fns, f"{g.name}: Torch-Pruning also prunes {names[module]} ({fn})"
                theirs.add((names[module], "out" if fn in out_fns else "in"))
        assert ours == theirs, g.name


# ----------------------------------------------------------------------------------------------
# Sensitivity scan

@pytest.mark.parametrize("granularity", ["weight", "filter"])
def test_sensitivity_scan_prunes_one_layer_at_a_time(granularity):
    model = small_model().eval()
    x = torch.randn(8, 3, 32, 32)
    reference = model(x).detach()

    @torch.no_grad()
    def closeness(m):   # a cheap stand-in for accuracy: 1 when the logits are unchanged
        return 1 / (1 + float((m(x) - reference).abs().mean()))
    scan = P.sensitivity_scan(model, [0.0, 0.5, 0.9], closeness, granularity=granularity)
    expected = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert list(scan) == (expected if granularity == "weight" else expected[:-1])  # no filters in the head
    for curve in scan.values():
        assert [a for a, _ in curve] == [0.0, 0.5, 0.9]
        assert curve[0][1] == 1.0 and curve[2][1] < 1.0
    assert P.sparsity(model) == 0.0
