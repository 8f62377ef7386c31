"""lcnn_lab.nas: the space, the proxies against hand-computed references, the strategies on a toy space
with a known best, the latency table, Optuna's study resuming from its database, and a smoke search."""
import math
import random

import pytest
import torch
from torch import nn

from lcnn_lab import nas
from lcnn_lab.profile import count_macs, count_params
from lcnn_lab.results import ResultsStore

# ---- a toy space: 4 decisions x 4 values, the best is known -----------------------------------

TOY = nas.SearchSpace({c: (0, 1, 2, 3) for c in "abcd"})
TARGET = {"a": 3, "b": 1, "c": 2, "d": 0}


def toy_evaluate(arch, fidelity="low", budget=None, store=None, latency=False, threads=1, space=TOY):
    """Accuracy peaks at TARGET; latency grows with the sum of the choices."""
    miss = sum((arch[n] - TARGET[n]) ** 2 for n in TARGET)
    total = sum(arch.values())
    return nas.Evaluation(accuracy=1 - miss / 40, seconds=1.0, params=total, macs=total,
                          latency_ms=1.0 + total if latency else None)


def toy_objective(kind="accuracy"):
    return nas.Objective(kind, space=TOY, evaluate_fn=toy_evaluate)


@pytest.mark.parametrize("strategy,kwargs,n", [
    (nas.random_search, {}, 200),
    (nas.regularized_evolution, {"population": 8, "sample": 4}, 80),
    (nas.reinforce, {}, 150),
])
def test_strategies_find_the_known_best(strategy, kwargs, n):
    result = strategy(TOY, toy_objective(), n, seed=0, progress=False, **kwargs)
    assert len(result.trials) == n
    assert result.best().arch == TARGET
    curve = result.running_best()
    assert curve == sorted(curve) and curve[-1] == 1.0


def test_evolution_and_reinforce_beat_random_at_a_small_budget():
    """At 40 of 256 architectures, the guided strategies should be closer to the best on average."""
    def mean_best(strategy):
        return sum(strategy(TOY, toy_objective(), 40, seed=s, progress=False).best().score for s in range(5)) / 5
    rand = mean_best(nas.random_search)
    assert mean_best(nas.regularized_evolution) > rand
    assert mean_best(nas.reinforce) > rand


def test_reinforce_policy_concentrates_on_the_best():
    """From 1/256 for every architecture, the policy should put most of its mass on the best one."""
    for seed in (0, 1):
        result = nas.reinforce(TOY, toy_objective(), 150, seed=seed, progress=False)
        assert math.prod(result.info["policy"][n][str(v)] for n, v in TARGET.items()) > 0.5


def test_optuna_tpe_finds_the_best():
    result = nas.optuna_search(TOY, toy_objective(), 60, sampler="tpe", seed=0, progress=False)
    assert result.best().arch == TARGET


def test_nsga2_front_is_pareto_optimal():
    result = nas.optuna_search(TOY, toy_objective("latency"), 40, sampler="nsga2", seed=0, progress=False)
    front = result.front()
    assert front
    for t in result.trials:  # nothing dominates a front member
        for f in front:
            assert not (t.accuracy > f.accuracy and t.latency_ms < f.latency_ms)
    lat = [f.latency_ms for f in front]
    acc = [f.accuracy for f in front]
    assert lat == sorted(lat) and acc == sorted(acc)


def test_optuna_study_resumes_from_its_database(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    calls = []

    def flaky(arch, **kw):
        calls.append(dict(arch))
        if len(calls) == 4:
            raise KeyboardInterrupt   # Ctrl-C in the middle of the fourth trial
        return toy_evaluate(arch, **kw)

    obj = nas.Objective("accuracy", space=TOY, evaluate_fn=flaky)
    with pytest.raises(KeyboardInterrupt):
        nas.optuna_search(TOY, obj, 10, storage=storage, study_name="resume", progress=False)
    first = calls[:3]
    result = nas.optuna_search(TOY, nas.Objective("accuracy", space=TOY, evaluate_fn=flaky), 10,
                               storage=storage, study_name="resume", progress=False)
    assert len(result.trials) == 10                      # three kept + seven new, not ten new
    assert [t.arch for t in result.trials[:3]] == first  # the finished ones came from the database
    assert len(calls) == 4 + 7
    again = nas.optuna_search(TOY, toy_objective(), 10, storage=storage, study_name="resume", progress=False)
    assert len(again.trials) == 10                       # complete: nothing left to run


def test_mnas_reward():
    assert nas.mnas_reward(0.8, 10, 10) == 0.8
    assert nas.mnas_reward(0.8, 20, 10) == pytest.approx(0.8 * 2 ** -0.07)
    assert nas.mnas_reward(0.8, 5, 10) > 0.8
    with pytest.raises(ValueError):
        nas.mnas_reward(0.8, 0, 10)


def test_latency_objective_prefers_the_faster_of_equals():
    obj = toy_objective("latency")
    slow, fast = dict(TARGET), dict(TARGET)
    slow_e = obj(slow)
    fast_e = nas.Evaluation(slow_e.accuracy, 1.0, 0, 0, slow_e.latency_ms / 2)
    assert obj.score(fast_e) > obj.score(slow_e)


# ---- the space ---------------------------------------------------------------------------------

def test_space_size_sample_mutate_encode():
    assert nas.SPACE.size == 90 ** 3 == len(nas.SPACE)
    rng = random.Random(0)
    for _ in range(20):
        arch = nas.SPACE.sample(rng)
        assert nas.SPACE.decode(nas.SPACE.encode(arch)) == arch
        child = nas.SPACE.mutate(arch, rng)
        assert sum(child[n] != arch[n] for n in arch) == 1
    with pytest.raises(ValueError, match="not a choice"):
        nas.SPACE.check({**nas.BASELINE, "k1": 4})
    with pytest.raises(ValueError, match="missing"):
        nas.SPACE.check({"op1": "conv"})


def test_baseline_is_cifar_net():
    from lcnn_lab.models import create_model
    ours, ref = nas.SPACE.build(nas.BASELINE), create_model("cifar_net")
    assert count_params(ours) == count_params(ref)
    assert count_macs(ours).total == count_macs(ref).total


def test_every_op_kernel_width_depth_builds():
    x = torch.randn(2, 3, 32, 32)
    for op in nas.OPS:
        for k in nas.KERNELS:
            arch = {**nas.BASELINE, "op1": op, "k1": k, "w1": 0.5, "d1": 1, "op2": op, "k2": k, "w2": 1.5,
                    "op3": op, "k3": k}
            assert nas.SPACE.build(arch)(x).shape == (2, 10)
    with pytest.raises(ValueError, match="op2"):
        nas.NASNetConfig(op2="dilated")


# ---- zero-cost proxies against references ------------------------------------------------------

def test_synflow_of_a_linear_chain_is_depth_times_output():
    """Without nonlinearities R = 1ᵀ|W3||W2||W1|1 is linear in each layer's weights, so
    Σ θ ∂R/∂θ = R for every layer and the score is 3R."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    w = [m.weight.detach().double().abs() for m in net]
    r = (w[2] @ w[1] @ w[0] @ torch.ones(5, dtype=torch.float64)).sum().item()
    assert nas.synflow(net, (1, 5)) == pytest.approx(math.log(3 * r), rel=1e-12)


def test_naswot_matches_a_direct_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU())
    x = torch.randn(4, 6)
    a1 = x @ net[0].weight.T + net[0].bias
    a2 = torch.relu(a1) @ net[2].weight.T + net[2].bias
    codes = torch.cat([a1 > 0, a2 > 0], dim=1).double()
    n = codes.shape[1]
    k = torch.tensor([[n - (codes[i] != codes[j]).sum().item() for j in range(4)] for i in range(4)],
                     dtype=torch.float64)
    assert nas.naswot(net, x) == pytest.approx(torch.linalg.slogdet(k).logabsdet.item(), rel=1e-9)


def test_proxies_leave_the_model_alone():
    net = nas.SPACE.build(nas.BASELINE)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    nas.synflow(net)
    nas.naswot(net, torch.randn(8, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training


def test_kendall_tau():
    assert nas.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert nas.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    with pytest.raises(ValueError):
        nas.kendall_tau([1], [1])


# ---- latency table, pareto front, the results store --------------------------------------------

def test_latency_table_predicts_the_measured_latency():
    from lcnn_lab.profile import measure_latency
    table = nas.LatencyTable(min_run_time=0.05)
    arch = {**nas.BASELINE, "op2": "sep", "k2": 5, "w3": 0.5}
    predicted = table.predict(arch)
    measured = measure_latency(nas.SPACE.build(arch), threads=1, min_run_time=0.2).median_ms
    assert 0.5 < predicted / measured < 2.0   # the sum of parts is near the whole (tight on an idle machine)
    n = len(table.entries)
    table.predict(arch)
    assert len(table.entries) == n            # measured once


def test_pareto_front():
    def t(acc, lat):
        return nas.Trial(0, {"x": (acc, lat)}, acc, acc, 0.0, 1, 1, lat)
    trials = [t(0.5, 1), t(0.6, 2), t(0.55, 3), t(0.7, 5), t(0.4, 4)]
    assert [(f.accuracy, f.latency_ms) for f in nas.pareto_front(trials)] == [(0.5, 1), (0.6, 2), (0.7, 5)]


def test_search_is_kept_in_the_store(tmp_path):
    store = ResultsStore(tmp_path)
    first = nas.search("random", 2, budget="smoke", store=store, progress=False)
    assert len(first.trials) == 2 and all(0 <= t.accuracy <= 1 for t in first.trials)
    assert len(list(store.entries("nas"))) == 1
    assert len(list(store.entries("train"))) == 2        # every candidate's training is in the store too
    again = nas.search("random", 2, budget="smoke", store=store, progress=False)
    assert [t.arch for t in again.trials] == [t.arch for t in first.trials]
    with pytest.raises(ValueError, match="strategy"):
        nas.search("grid", 2, budget="smoke", store=store)
    with pytest.raises(ValueError, match="n_trials"):
        nas.search("random", 0, budget="smoke", store=store)


def test_darts_smoke():
    out = nas.darts(budget="smoke", epochs=1, progress=False)
    assert nas.SPACE.check(out["arch"])
    assert len(out["alphas"]) == 3 and all(abs(sum(a) - 1) < 1e-6 for a in out["alphas"])


def test_nas_worker_command_joins_the_study(tmp_path, monkeypatch, capsys):
    """Two runs of the worker command on one database add up to one study of --trials trials."""
    from lcnn_lab.__main__ import main
    monkeypatch.setenv("LCNN_RESULTS", str(tmp_path / "store"))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["nas-worker", "--storage", storage, "--study", "s", "--budget", "smoke"]
    assert main(args + ["--trials", "1", "--seed", "0"]) == 0
    assert main(args + ["--trials", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "ran 1 of the study's 1" in out and "of the study's 2 finished trials" in out
    assert main(args + ["--trials", "2", "--objective", "latency", "--sampler", "nsga2"]) == 1
    assert "created with 1 objective(s)" in capsys.readouterr().err


def test_fidelity_and_objective_errors():
    with pytest.raises(ValueError, match="fidelity"):
        nas.fidelity_config("medium")
    with pytest.raises(ValueError, match="objective kind"):
        nas.Objective("speed")
    low, high = nas.fidelity_config("low", "quick"), nas.fidelity_config("high", "quick")
    assert low.train_images == 5_000 and high.train_images is None and low.epochs == high.epochs
