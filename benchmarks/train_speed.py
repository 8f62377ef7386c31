"""Time to accuracy: the classic PyTorch tutorial pipeline against lcnn_lab's trainer, in one run.

(a) The PyTorch "Training a classifier" tutorial: LeNet (conv 3->6 5x5, pool, conv 6->16 5x5, pool,
    fc 400-120-84-10), a DataLoader over PIL images with ToTensor + Normalize, batch 4, SGD lr 0.001
    momentum 0.9, 2 epochs. Its final test accuracy is A.
(b) lcnn_lab.train on the baseline cifar_net, evaluated on the test set several times per epoch so that
    each crossing can be placed: a one-epoch schedule for the time to reach A (what a reader who wants A
    quickly would run), and a 300-second one-cycle schedule for the times to 80 % and 85 %.

Training seconds exclude evaluation in both. Targets on 2 CPU cores: (b) reaches A at least 10x sooner
than (a) trains, and reaches 85 % within 300 s.

    LCNN_DATA=../shared/data python benchmarks/train_speed.py [--seconds 300] [--tutorial-epochs 2]
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
from lcnn_lab.train import TrainConfig, train


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


def crossing(history, target: float) -> str:
    """Training seconds at the first evaluation at or above ``target``, with the previous one as bound."""
    prev = 0.0
    for h in history:
        if h.test_accuracy >= target:
            return f"{h.seconds:7.1f} s (between {prev:.1f} and {h.seconds:.1f})"
        prev = h.seconds
    best = max(history, key=lambda h: h.test_accuracy)
    return f"not reached (best {100 * best.test_accuracy:.2f} % at {best.seconds:.1f} s)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300, help="time cap of lcnn_lab's schedule")
    ap.add_argument("--epochs", type=float, default=40, help="lcnn_lab epochs if the time cap is not hit")
    ap.add_argument("--short-epochs", type=float, default=1, help="schedule length of the time-to-A run")
    ap.add_argument("--skip-long", action="store_true", help="only the time-to-A run (quick experiments)")
    ap.add_argument("--tutorial-epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="tutorial DataLoader workers (the tutorial uses 2)")
    ap.add_argument("--evals-per-epoch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-tutorial", type=float, default=None, metavar="A",
                    help="do not run (a); use this accuracy A (for quick experiments only)")
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
        acc_a, sec_a = args.skip_tutorial, float("nan")

    def run(label: str, **kw):
        print(f"(b) lcnn_lab.train, cifar_net, {label}")
        config.seed_everything(0)
        cfg = TrainConfig(budget="full", evals_per_epoch=args.evals_per_epoch, history_eval_images=10_000,
                          threads=threads, **kw)
        result = train(create_model("cifar_net"), cfg)
        print(f"  {result}")
        for h in result.history:
            print(f"    epoch {h.epoch:5.2f}  {h.seconds:6.1f} s  loss {h.train_loss:.3f}  "
                  f"test {100 * h.test_accuracy:.2f} %")
        return result

    short = run(f"{args.short_epochs:g}-epoch schedule", epochs=args.short_epochs, max_seconds=None)
    result = short if args.skip_long else \
        run(f"{args.seconds:g} s schedule", epochs=args.epochs, max_seconds=args.seconds)

    print("\nsummary (training seconds, evaluation excluded)")
    print(f"  tutorial: A = {100 * acc_a:.2f} % in {sec_a:.1f} s")
    first = next((h for h in short.history if h.test_accuracy >= acc_a), None)
    if first is not None:
        ratio = sec_a / first.seconds
        print(f"  lcnn_lab ({args.short_epochs:g}-epoch schedule) reaches A at {crossing(short.history, acc_a)}: "
              f"{ratio:.1f}x sooner (target >= 10x: {'met' if ratio >= 10 else 'MISSED'})")
    else:
        print(f"  lcnn_lab ({args.short_epochs:g}-epoch schedule) reaches A: {crossing(short.history, acc_a)}")
    if args.skip_long:
        return
    print(f"  lcnn_lab ({args.seconds:g} s schedule) reaches A at {crossing(result.history, acc_a)}")
    print(f"  lcnn_lab reaches 80 %: {crossing(result.history, 0.80)}")
    at85 = next((h.seconds for h in result.history if h.test_accuracy >= 0.85), None)
    print(f"  lcnn_lab reaches 85 %: {crossing(result.history, 0.85)} "
          f"(target <= 300 s: {'met' if at85 is not None and at85 <= 300 else 'MISSED'})")
    print(f"  final: {result.accuracy}")


if __name__ == "__main__":
    main()
