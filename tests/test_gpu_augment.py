"""Per-sample device augmentation: crop/flip against hand-sliced numpy and torchvision,
offset statistics, ops against torchvision's reference per image, RandAugment/AutoAugment
behaviour, Cutout geometry."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F1
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

from longtail.data.gpu_augment import (
    OPS,
    AutoAugment,
    Cutout,
    Normalize,
    RandAugment,
    apply_ops,
    crop_flip,
    normalize,
    random_crop_flip,
)


def test_crop_flip_matches_numpy_slicing_and_torchvision():
    image = np.arange(1, 17, dtype=np.uint8).reshape(1, 4, 4)
    batch = torch.from_numpy(image).unsqueeze(0).repeat(3, 1, 1, 1)
    top, left = torch.tensor([0, 2, 1]), torch.tensor([2, 0, 1])
    flip = torch.tensor([False, True, False])
    out = crop_flip(batch, top, left, flip, padding=1).numpy()
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1)))
    np.testing.assert_array_equal(out[0], padded[:, 0:4, 2:6])
    np.testing.assert_array_equal(out[1], padded[:, 2:6, 0:4][:, :, ::-1])
    np.testing.assert_array_equal(out[2], image)
    # the same with torchvision's pad / crop / hflip
    reference = TF.horizontal_flip(TF.crop(TF.pad(batch[1], [1]), 2, 0, 4, 4))
    assert torch.equal(torch.from_numpy(out[1].copy()), reference)
    # hand-written corner: top=0, left=2 drops row 3, shifts columns left by one, zero top row
    assert out[0, 0, 0].tolist() == [0, 0, 0, 0] and out[0, 0, 1].tolist() == [2, 3, 4, 0]


def test_random_crop_flip_offsets_and_flips_are_uniform_per_sample():
    side, padding, n = 8, 2, 20_000
    image = (torch.arange(side * side) + 1).view(1, 1, side, side).to(torch.uint8)
    out = random_crop_flip(image.expand(n, 1, side, side), padding, generator=torch.Generator().manual_seed(0))
    assert out.shape == (n, 1, side, side) and out.dtype == torch.uint8
    centre = out[:, 0, 4, 4].long() - 1  # always inside the image for padding 2
    right = out[:, 0, 4, 5].long() - 1
    flipped = right < centre
    top = centre // side - 4 + padding
    left = torch.where(flipped, centre % side - (side - 1 - 4), centre % side - 4) + padding
    for values, k in ((top, 5), (left, 5), (flipped.long(), 2)):
        observed = torch.bincount(values, minlength=k).numpy()
        expected = n / k
        assert ((observed - expected) ** 2 / expected).sum() < 18.5  # chi-square, 4 dof, p = 0.001
    # independent draws per sample: top and left are not identical
    assert (top != left).float().mean() > 0.7


def test_normalize_by_hand():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 2, 1, 3)
    out = normalize(images, mean=[0.5, 0.2], std=[0.25, 0.5])
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [-2.0, 2.0, -1.2], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 0].numpy(), [-0.4, 1.6, 0.0], atol=1e-6)
    module = Normalize([0.5, 0.2], [0.25, 0.5], dtype=torch.bfloat16)
    assert module(images).dtype == torch.bfloat16
    torch.testing.assert_close(module(images).float(), out, atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="one mean and one std per channel"):
        normalize(images, mean=[0.5], std=[0.2, 0.2, 0.2])
    with pytest.raises(TypeError, match="uint8"):
        normalize(images.float(), mean=[0.5, 0.5], std=[0.5, 0.5])


def _magnitudes(name, batch, width, gen):
    if name == "Posterize":
        return torch.randint(0, 9, (batch,), generator=gen).float()
    if name == "Solarize":
        return torch.rand(batch, generator=gen) * 255
    if name in ("TranslateX", "TranslateY"):
        return (torch.rand(batch, generator=gen) * 2 - 1) * width / 2
    if name == "Rotate":
        return (torch.rand(batch, generator=gen) * 2 - 1) * 30
    return (torch.rand(batch, generator=gen) * 2 - 1) * 0.9


@pytest.mark.parametrize("shape", [(3, 12, 10), (1, 7, 9)])
def test_each_op_matches_torchvision_per_image(shape):
    gen = torch.Generator().manual_seed(1)
    batch = 6
    images = torch.randint(0, 256, (batch, *shape), generator=gen, dtype=torch.uint8)
    images[:3] = (torch.rand(3, shape[0], 1, 1, generator=gen) * 150 + torch.linspace(0, 90, shape[2])).to(torch.uint8)
    for j, name in enumerate(OPS):
        magnitude = _magnitudes(name, batch, shape[2], gen)
        out = apply_ops(images, torch.full((batch,), j), magnitude)
        expected = torch.stack(
            [_apply_op(images[i], name, float(magnitude[i]), InterpolationMode.NEAREST, None) for i in range(batch)]
        )
        assert torch.equal(out, expected), name


def test_ops_mixed_in_one_batch_match_per_image_reference():
    gen = torch.Generator().manual_seed(2)
    batch = len(OPS) * 2
    images = torch.randint(0, 256, (batch, 3, 9, 11), generator=gen, dtype=torch.uint8)
    op = torch.arange(batch) % len(OPS)
    magnitude = torch.stack([_magnitudes(OPS[k], 1, 11, gen)[0] for k in op.tolist()])
    out = apply_ops(images, op, magnitude)
    for i in range(batch):
        expected = _apply_op(images[i], OPS[op[i]], float(magnitude[i]), InterpolationMode.NEAREST, None)
        assert torch.equal(out[i], expected), OPS[op[i]]


def test_geometric_ops_are_identity_at_magnitude_zero():
    images = torch.randint(0, 256, (10, 3, 8, 6), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    geometric = ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]
    op = torch.tensor([OPS.index(name) for name in geometric * 2])
    for interpolation in ("nearest", "bilinear"):
        assert torch.equal(apply_ops(images, op, torch.zeros(10), interpolation=interpolation), images)


@pytest.mark.parametrize("make", [lambda: RandAugment(), lambda: AutoAugment("cifar10")])
def test_policies_per_sample_shape_range_determinism(make):
    augment = make()
    image = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    batch = image.expand(64, 3, 16, 16)
    out = augment(batch, generator=torch.Generator().manual_seed(5))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    again = augment(batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again)
    other = augment(batch, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)
    # identical inputs, different outputs: each image drew its own ops
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 10


def test_randaugment_tables_follow_torchvision():
    augment = RandAugment(num_ops=2, magnitude=9)
    assert augment.ops == (
        "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
        "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
    )
    magnitude = dict(zip(augment.ops, augment.magnitudes.tolist()))
    assert magnitude["Rotate"] == pytest.approx(9.0)  # 30 * 9/30
    assert magnitude["ShearX"] == pytest.approx(0.09)
    assert magnitude["TranslateX"] == pytest.approx(150 / 331 * 9 / 30)
    assert magnitude["Posterize"] == 7 and magnitude["Solarize"] == pytest.approx(255 - 76.5)
    # num_ops=1, magnitude 0: every op is the identity on this image (factor 1, 8 bits,
    # threshold 255, zero shifts; Equalize keeps images whose non-peak pixels are < 255)
    # except AutoContrast, which maps 60 -> 0 and 100 -> 255: 1 image in 14 changes.
    mid = torch.full((4000, 1, 4, 4), 100, dtype=torch.uint8)
    mid[:, :, 0, 0] = 60
    out = RandAugment(num_ops=1, magnitude=0)(mid, generator=torch.Generator().manual_seed(7))
    changed = (out != mid).flatten(1).any(1)
    assert changed.float().mean().item() == pytest.approx(1 / 14, abs=0.015)
    assert torch.equal(out[changed], F1.autocontrast(mid[changed]))  # torchvision.transforms (v1)


def test_autoaugment_policy_tables():
    augment = AutoAugment("cifar10")
    assert augment.stage_op.shape == (25, 2)
    assert augment.ops[0] == "Identity"
    first = [augment.ops[k] for k in augment.stage_op[0].tolist()]
    assert first == ["Invert", "Contrast"]
    assert augment.stage_prob[0].tolist() == pytest.approx([0.1, 0.2])
    with pytest.raises(ValueError, match="valid policies"):
        AutoAugment("cifar100")


def test_cutout_masks_one_clipped_square_per_image():
    images = torch.full((500, 3, 32, 32), 255, dtype=torch.uint8)
    out = Cutout(size=16)(images, generator=torch.Generator().manual_seed(8))
    masked = out[:, 0] == 0
    assert torch.equal(masked.unsqueeze(1).expand_as(out), out == 0)  # all channels alike
    rows, cols = masked.any(2), masked.any(1)
    # the masked set is exactly the product of its rows and columns (a rectangle), side <= 16
    assert torch.equal(masked, rows.unsqueeze(2) & cols.unsqueeze(1))
    assert rows.sum(1).max() == 16 and cols.sum(1).max() == 16 and rows.sum(1).min() >= 8
    # on normalized floats, fill 0 is the mean colour, as in the reference code
    normalized = normalize(images[:2], [0.5] * 3, [0.5] * 3)
    assert (Cutout(16)(normalized) == 0).any()


def test_input_errors():
    with pytest.raises(TypeError, match="uint8"):
        RandAugment()(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="interpolation"):
        RandAugment(interpolation="bicubic")
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=31)
    with pytest.raises(ValueError, match="unknown augmentation ops"):
        apply_ops(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, dtype=torch.long), torch.zeros(1), ["Blur"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture_gives_fresh_randomness():
    device = torch.device("cuda")
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device=device)
    rand_augment, auto_augment = RandAugment().to(device), AutoAugment().to(device)
    norm, cutout = Normalize([0.49, 0.48, 0.45], [0.2, 0.2, 0.2]).to(device), Cutout(16)

    def step():
        x = random_crop_flip(images)
        return cutout(norm(auto_augment(rand_augment(x))))

    torch.cuda.set_sync_debug_mode("error")
    try:
        eager = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    first = out.clone()
    graph.replay()
    torch.cuda.synchronize()
    assert out.shape == eager.shape and not torch.equal(first, out)
    # the eager CUDA path agrees with the CPU path op by op
    op = torch.arange(64, device=device) % len(OPS)
    magnitude = torch.full((64,), 0.3, device=device)
    torch.testing.assert_close(
        apply_ops(images, op, magnitude).cpu(), apply_ops(images.cpu(), op.cpu(), magnitude.cpu()), atol=1, rtol=0
    )
