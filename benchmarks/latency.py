"""Do fewer MACs mean proportionally less time? cifar_net's convolution variants, measured side by side.

Prints figures, asserts nothing (timings belong to one machine; compare them as ratios within one run):

1. Repeatability: the default cifar_net timed five times in this process, and the spread of the five
   medians as a percentage of their median (target: <= 5 % on an idle machine).
2. MACs against latency for kernel size {3, 5, 7} x groups {1, 2, 4, 8, depthwise}, each as a ratio
   to the standard convolution (groups=1) of the same kernel size. Group and depthwise-separable
   convolutions cut MACs by 1/g and ~1/k^2 (long2024 §2.2), but the survey also warns that they "rely
   on specific hardware acceleration, with limited optimization effects on general-purpose
   processors": the latency ratio column is that claim, measured.

    python benchmarks/latency.py            # full grid, batch 1 and 32, about 1-2 minutes on 2 cores
    python benchmarks/latency.py --quick    # smoke run, about 10 s
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from lcnn_lab.config import get_device, get_threads, provenance
from lcnn_lab.models import create_model
from lcnn_lab.profile import compare_latency, count_macs, measure_latency
from lcnn_lab.units import scaled

SPREAD_TARGET = 5.0  # %: five medians of the same model should agree this well on an idle machine


class CpuWatch:
    """How much CPU *other* processes (and the hypervisor, as steal) took while a block ran.

    Read from /proc (Linux): total busy time of all CPUs minus this process's own. Timings taken
    while other work ran are not this model's latency, so every measurement says how busy it was.
    """

    def __enter__(self) -> "CpuWatch":
        self.start = self._snapshot()
        return self

    def __exit__(self, *exc) -> None:
        self.end = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own = int(fields[11]) + int(fields[12])          # utime + stime, in clock ticks
            return user + nice + system + irq + softirq, own, steal, time.perf_counter()
        except (OSError, ValueError):
            return None

    @property
    def others_and_steal(self) -> tuple[float, float] | None:
        """(CPU cores used by other processes, cores stolen by the hypervisor), averaged."""
        if self.start is None or self.end is None:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        (busy0, own0, steal0, t0), (busy1, own1, steal1, t1) = self.start, self.end
        seconds = (t1 - t0) * tick
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / seconds, (steal1 - steal0) / seconds

    def __str__(self) -> str:
        usage = self.others_and_steal
        return "other processes n/a" if usage is None else \
            f"other processes {usage[0]:.2f} cores, steal {usage[1]:.2f} cores"


def print_header(threads: int, device: torch.device) -> None:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    p = provenance(threads=threads, device=device, data=False)
    print("# Latency vs MACs: cifar_net convolution variants")
    print(f"machine   {p['machine']}, {os.cpu_count()} logical cores, {platform.platform()}, "
          f"Python {platform.python_version()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"device    {p['device']} ({p['device_name']}); {p['threads']} intra-op threads")
    print(f"torch     {p['torch']}, lcnn_lab {p['lcnn_lab']}, {p['date']}")
    print(f"load avg  {load} (1/5/15 min); other work on the machine makes timings noisy")
    print()


def repeatability(runs: int, threads: int, device: torch.device, min_run_time: float) -> None:
    model = create_model("cifar_net")
    print(f"## 1. The same model ({model.config}), batch 1, timed {runs} times in one process")
    medians, busy = [], []
    for i in range(runs):
        with CpuWatch() as watch:
            lat = measure_latency(model, threads=threads, device=device, min_run_time=min_run_time)
        medians.append(lat.median_ms)
        usage = watch.others_and_steal
        busy.append(usage is not None and sum(usage) > 0.1)
        print(f"run {i + 1}   {lat}   [{lat.calls} timed calls; {watch}]")
    mid = statistics.median(medians)
    spread = 100 * (max(medians) - min(medians)) / mid
    verdict = "met" if spread <= SPREAD_TARGET else "NOT met"
    print(f"median of medians {mid:.3f} ms; spread (max - min) / median = {spread:.1f} % "
          f"(target <= {SPREAD_TARGET:.0f} % on an idle machine: {verdict})")
    if any(busy):
        print(f"NOTE: other work used > 0.1 core during {sum(busy)} of the {runs} runs; "
              f"this machine was not idle, so the target cannot be judged from this run")
    print()


def grid(kernel_sizes, groups_list, batches, threads: int, device: torch.device,
         min_run_time: float, rounds: int) -> None:
    print("## 2. MACs against latency, cifar_net, every stage conv replaced")
    print("MACs are per image (FLOPs = 2 x MACs); latency is per forward pass of the whole batch.")
    print(f"Each configuration is timed in {rounds} interleaved rounds (so a slow spell of the machine hits")
    print("all of them alike); shown: median of the round medians ± half their range. Ratios are to")
    print("groups=1 at the same kernel size and batch.")
    print()
    models = {f"k={k} g={g}": create_model("cifar_net", kernel_size=k, groups=g)
              for k in kernel_sizes for g in groups_list}
    macs = {(k, g): count_macs(models[f"k={k} g={g}"]).total for k in kernel_sizes for g in groups_list}
    with CpuWatch() as watch:
        timed = compare_latency(models, batches=batches, rounds=rounds, threads=threads, device=device,
                                min_run_time=min_run_time, progress=False)

    header = (f"{'k':>2} {'groups':>9} {'MACs':>9} {'MACs':>6} {'batch':>5} "
              f"{'latency ms':>17} {'latency':>7} {'GMAC/s':>7}")
    print(header)
    print(f"{'':>2} {'':>9} {'(M)':>9} {'ratio':>6} {'':>5} {'':>17} {'ratio':>7} {'':>7}")
    print("-" * len(header))
    for k in kernel_sizes:
        for batch in batches:
            base = f"k={k} g={groups_list[0]}"
            for groups in groups_list:
                name = f"k={k} g={groups}"
                ms, half_range = timed.median_ms(name, batch), timed.spread_ms(name, batch)
                rate = scaled(macs[(k, groups)] * batch / (ms * 1e-3), "G")
                print(f"{k:>2} {groups!s:>9} {scaled(macs[(k, groups)], 'M'):9.2f} "
                      f"{macs[(k, groups)] / macs[(k, groups_list[0])]:6.3f} {batch:>5} "
                      f"{f'{ms:9.3f} ± {half_range:5.3f}':>17} {timed.ratio(name, base, batch):7.3f} {rate:7.1f}")
        print()
    print(f"during the grid: {watch} on average")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op CPU threads (default: LCNN_THREADS or all cores)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes for the grid (default: 1 32; --quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer configurations and shorter timings, for a smoke run")
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds of timed runs per repeatability measurement, half of it per "
                             "grid round (default: 1.0; --quick: 0.3)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds over the grid (default: 3; --quick: 2)")
    parser.add_argument("--device", default="cpu", help="device to time on (default: cpu)")
    args = parser.parse_args()

    threads = get_threads(args.threads)
    device = get_device(args.device)
    min_run_time = args.min_run_time or (0.3 if args.quick else 1.0)   # for section 1
    grid_run_time = min_run_time / 2                                    # per round in section 2
    rounds = args.rounds or (2 if args.quick else 3)
    batches = args.batch or ([1] if args.quick else [1, 32])
    kernel_sizes = (3, 5) if args.quick else (3, 5, 7)
    groups_list = (1, 4, "depthwise") if args.quick else (1, 2, 4, 8, "depthwise")

    start = time.perf_counter()
    print_header(threads, device)
    repeatability(5, threads, device, min_run_time)
    grid(kernel_sizes, groups_list, batches, threads, device, grid_run_time, rounds)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"total time {time.perf_counter() - start:.0f} s; load avg at the end {load}")


if __name__ == "__main__":
    main()
