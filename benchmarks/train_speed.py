"""Time to accuracy: the classic PyTorch tutorial pipeline against lcnn_lab's trainer, in one run.

(a) The PyTorch "Training a classifier" tutorial: LeNet (conv 3->6 5x5, pool, conv 6->16 5x5, pool,
    fc 400-120-84-10), a DataLoader over PIL images with ToTensor + Normalize, batch 4, SGD lr 0.001
    momentum 0.9, 2 epochs. Its final test accuracy is A, its training time T_tut.
(b) lcnn_lab's trainer on the baseline cifar_net (trained_model's recipe: lcnn_lab.train.initialize +
    train), evaluated on the whole test set several times per epoch so that each crossing can be
    placed: a one-epoch schedule (the quick budget: the time to reach A, and the quick accuracy), and
    a one-cycle schedule of 4 x T_tut seconds for the times to 85 % and 90 %.

Training seconds exclude evaluation in both. Absolute seconds differ between hosts of the same kind,
so the targets are ratios to T_tut measured in the same run: A at least 10x sooner than T_tut; the
quick (one-epoch) baseline >= 75 %; 85 % within 2 x T_tut; 90 % within 4 x T_tut.

    LCNN_DATA=../shared/data python benchmarks/train_speed.py [--long-factor 4] [--tutorial-epochs 2]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torchvision.transforms as transforms
from PIL import Image

from lcnn_lab import config
from lcnn_lab.data import data_source, load_cifar10
from lcnn_lab.models import create_model
from lcnn_lab.train import TrainConfig, initialize, train


class PILCifar(torch.utils.data.Dataset):
    """CIFAR-10 served as PIL images, one at a time, as torchvision.datasets.CIFAR10 does."""

    def __init__(self, split: str, transform):
        images, labels = load_cifar10(split)
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3) uint8, HWC as in the pickles
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def tutorial(epochs: int, workers: int) -> tuple[float, float]:
    """The tutorial, verbatim in substance. Returns (test accuracy, training seconds)."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainloader = torch.utils.data.DataLoader(PILCifar("train", transform), batch_size=4, shuffle=True,
                                              num_workers=workers)
    testloader = torch.utils.data.DataLoader(PILCifar("test", transform), batch_size=4, shuffle=False,
                                             num_workers=workers)
    net = create_model("lenet")
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        running = 0.0
        for i, (inputs, labels) in enumerate(trainloader):
            optimizer.zero_grad()
            loss = criterion(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running += loss.item()
            if i % 2000 == 1999:
                print(f"  [tutorial] epoch {epoch + 1}, step {i + 1:5d}: loss {running / 2000:.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
                running = 0.0
    seconds = time.perf_counter() - t0
    correct = total = 0
    with torch.no_grad():
        for images, labels in testloader:
            correct += (net(images).argmax(1) == labels).sum().item()
            total += labels.numel()
    return correct / total, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long-factor", type=float, default=4, help="long schedule = this many x T_tut seconds")
    ap.add_argument("--seconds", type=float, default=None, help="long schedule in seconds (instead of the factor)")
    ap.add_argument("--epochs", type=float, default=40, help="lcnn_lab epochs if the time cap is not hit")
    ap.add_argument("--short-epochs", type=float, default=1, help="schedule length of the time-to-A run")
    ap.add_argument("--skip-long", action="store_true", help="only the time-to-A run (quick experiments)")
    ap.add_argument("--tutorial-epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="tutorial DataLoader workers (the tutorial uses 2)")
    ap.add_argument("--evals-per-epoch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-tutorial", type=float, default=None, metavar="A",
                    help="do not run (a); use this accuracy A (for quick experiments only)")
    ap.add_argument("--tutorial-seconds", type=float, default=150.0,
                    help="with --skip-tutorial: the tutorial's training time T_tut to compare with")
    args = ap.parse_args()

    threads = config.set_threads(args.threads)
    p = config.provenance(threads=threads)
    print(f"machine: {p['machine']}, {p['device']} ({p['device_name']}), {p['threads']} threads, "
          f"torch {p['torch']}, lcnn_lab {p['lcnn_lab']}, {p['date']}")
    print(f"data: {data_source()}\n")

    if args.skip_tutorial is None:
        print("(a) PyTorch tutorial pipeline")
        acc_a, sec_a = tutorial(args.tutorial_epochs, args.workers)
        print(f"  test accuracy A = {100 * acc_a:.2f} % after {sec_a:.1f} s of training\n")
    else:
        acc_a, sec_a = args.skip_tutorial, args.tutorial_seconds

    def run(label: str, **kw):
        print(f"(b) lcnn_lab.train, cifar_net, {label}")
        config.seed_everything(0)
        cfg = TrainConfig(budget="full", evals_per_epoch=args.evals_per_epoch, history_eval_images=10_000,
                          threads=threads, **kw)
        model = initialize(create_model("cifar_net"), cfg)
        result = train(model, cfg)
        print(f"  {result}")
        for h in result.history:
            print(f"    epoch {h.epoch:5.2f}  {h.seconds:6.1f} s  loss {h.train_loss:.3f}  "
                  f"test {100 * h.test_accuracy:.2f} %")
        return result

    short = run(f"{args.short_epochs:g}-epoch schedule (the quick budget)", epochs=args.short_epochs,
                max_seconds=None)
    long_seconds = args.seconds or args.long_factor * sec_a
    result = None if args.skip_long else \
        run(f"{long_seconds:.0f} s schedule", epochs=args.epochs, max_seconds=long_seconds)

    print("\nsummary (training seconds, evaluation excluded)")
    print(f"  tutorial: A = {100 * acc_a:.2f} % in T_tut = {sec_a:.1f} s")
    first = next((h for h in short.history if h.test_accuracy >= acc_a), None)
    if first is not None:
        ratio = sec_a / first.seconds
        print(f"  lcnn_lab ({args.short_epochs:g}-epoch schedule) reaches A at {first.seconds:.1f} s: "
              f"{ratio:.1f}x sooner (target >= 10x: {'met' if ratio >= 10 else 'MISSED'})")
    else:
        print(f"  lcnn_lab ({args.short_epochs:g}-epoch schedule) reaches A: not reached "
              f"(target >= 10x: MISSED)")
    quick = short.accuracy.value
    print(f"  lcnn_lab quick baseline ({args.short_epochs:g} epoch): {short.accuracy} "
          f"(target >= 75 %: {'met' if quick >= 0.75 else 'MISSED'})")
    if result is None:
        return
    for target, factor in ((0.85, 2), (0.90, 4)):
        at = next((h.seconds for h in result.history if h.test_accuracy >= target), None)
        if at is None:
            best = max(result.history, key=lambda h: h.test_accuracy)
            print(f"  lcnn_lab reaches {100 * target:.0f} %: not reached (best {100 * best.test_accuracy:.2f} % "
                  f"at {best.seconds:.1f} s) (target <= {factor}x: MISSED)")
        else:
            print(f"  lcnn_lab reaches {100 * target:.0f} %: {at:.1f} s = {at / sec_a:.1f}x the tutorial's time "
                  f"(target <= {factor}x: {'met' if at <= factor * sec_a else 'MISSED'})")
    print(f"  final ({long_seconds:.0f} s schedule): {result.accuracy}")


if __name__ == "__main__":
    main()
