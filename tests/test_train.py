"""The trainer learns, is deterministic under a seed, evaluates subsets, and augments whole batches."""

import pytest
import torch

import lcnn_lab.train as T
from lcnn_lab.config import get_device, seed_everything
from lcnn_lab.models import create_model

# A small model and a small slice of real CIFAR-10 keep each training run to a few seconds.
SMALL = dict(width=0.25)
# No wall-clock cap: None would mean "the budget's" (20 s at smoke), which a loaded machine can hit.
NO_CAP = 1e9
FAST = T.TrainConfig(budget="smoke", epochs=2, train_images=2_000, eval_images=1_000, max_seconds=NO_CAP,
                     batch_size=128, progress=False, history_eval_images=500)


def test_smoke_training_beats_chance():
    seed_everything(0)  # the initial weights: the same in every run, whichever tests ran before
    model = create_model("cifar_net", **SMALL)
    before = T.evaluate(model, n=1_000)
    result = T.train(model, FAST)
    # chance is 10 %; with n=1000 the standard error is about 1 point, so 15 % is far above noise
    # (30 steps from seed 0 reach 18.3 % here)
    assert result.accuracy.value > 0.15 > before.value - 0.02
    assert result.accuracy.n == 1_000 and result.seconds > 0 and result.images_per_second > 0
    assert len(result.history) == 2 and result.history[-1].epoch == pytest.approx(2.0)
    assert "mirror" in result.data_source or "official" in result.data_source.lower()
    assert result.budget == "smoke" and result.device == str(get_device())  # the GPU where there is one


def test_same_seed_same_model():
    cfg = T.TrainConfig(budget="smoke", epochs=1, train_images=512, eval_images=200, max_seconds=NO_CAP,
                        batch_size=128, progress=False, history_eval_images=200)
    seed_everything(0)
    a = create_model("cifar_net", **SMALL)
    seed_everything(0)
    b = create_model("cifar_net", **SMALL)
    torch.manual_seed(123)  # the global RNG state at the call must not matter
    ra = T.train(a, cfg)
    rb = T.train(b, cfg)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=f"{name} differs")
    assert ra.accuracy == rb.accuracy
    seed_everything(0)
    c = create_model("cifar_net", **SMALL)
    T.train(c, cfg, seed=1)  # same start, different batches and augmentation
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_evaluate_subset_is_fixed_and_has_standard_error():
    model = create_model("cifar_net", **SMALL)
    a, b = T.evaluate(model, n=300), T.evaluate(model, n=300)
    assert a == b and a.n == 300
    assert a.se == pytest.approx((max(a.value * (1 - a.value), 1e-12) / 300) ** 0.5)
    assert T.evaluate(model, n=None, split="test").n == 10_000
    with pytest.raises(ValueError, match="split"):
        T.evaluate(model, split="validation")


def test_augmentation_shapes_and_content():
    n, g = 64, torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # distinct images

    def shifts_matching(out, image, pad):
        # (dy, dx) in [-pad, pad]^2 with `out` = `image` shifted by (dy, dx), compared on the interior
        # (pad pixels in from each border), which a shift by at most pad fills without padding
        inner = out[:, pad:32 - pad, pad:32 - pad]
        return [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                if torch.equal(inner, image[:, pad + dy:32 - pad + dy, pad + dx:32 - pad + dx])]

    for pad in (1, 2):
        for images in (x, x.float() / 255):  # uint8 as training stores it, and float
            y = T.batch_translate(images, pad, torch.Generator().manual_seed(0))
            assert y.shape == images.shape and y.dtype == images.dtype
            padded = torch.nn.functional.pad(images.float(), (pad,) * 4, mode="reflect")
            shifts = []
            for i in range(n):
                found = shifts_matching(y[i], images[i], pad)
                assert len(found) == 1, f"image {i} is not its input shifted by at most {pad} px: {found}"
                (dy, dx), = found
                # the border is filled by reflection: the output is a crop of the reflect-padded input
                assert torch.equal(y[i].float(), padded[i, :, pad + dy:pad + dy + 32, pad + dx:pad + dx + 32])
                shifts.append((dy, dx))
            # pixels move, and each image draws its own shift
            assert sum(s != (0, 0) for s in shifts) > n // 2
            assert len(set(shifts)) > (2 * pad + 1) ** 2 // 2
            assert {dy for dy, _ in shifts} == {dx for _, dx in shifts} == set(range(-pad, pad + 1))
            assert torch.equal(T.batch_translate(images, pad, torch.Generator().manual_seed(0)), y)
    assert torch.equal(T.batch_translate(x, 0, g), x)

    f = T.batch_flip(x, torch.Generator().manual_seed(0))
    assert f.shape == x.shape and f.dtype == x.dtype
    kept = [torch.equal(f[i], x[i]) for i in range(n)]
    mirrored = [torch.equal(f[i], x[i].flip(-1)) for i in range(n)]
    assert all(k != m for k, m in zip(kept, mirrored)), "each image is either kept or mirrored left-right"
    assert 10 < sum(mirrored) < 54  # about half (a fair coin lands outside with probability < 1e-6)
    # the generator decides, as training's seed promises: the same seed flips the same images
    assert torch.equal(T.batch_flip(x, torch.Generator().manual_seed(0)), f)
    assert not torch.equal(T.batch_flip(x, torch.Generator().manual_seed(1)), f)
