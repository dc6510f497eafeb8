"""The conventional CIFAR-LT training loop, kept as the speed reference.

Written in the style of the standard long-tailed repositories (Cao et al. 2019's LDAM-DRW
``cifar_train.py`` and the codebases derived from it): a torchvision ``DataLoader`` over PIL
images with ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``,
``Normalize``; 4 workers; fp32; the learning rate set per epoch; per-step ``.item()`` calls for
the running loss and accuracy meters; evaluation on the test set and a checkpoint every epoch.
It trains the same ResNet-32 on the same arrays as the fast path, so the two can be timed
side by side.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from ..config import ScheduleConfig
from ..data.dataset import LongTailedDataset
from ..engine.schedules import epoch_factor
from ..models.factory import build_model


class PILArrayDataset(Dataset):
    """uint8 N×C×H×W arrays served as PIL images through torchvision transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))  # HWC, as torchvision's CIFAR10
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].squeeze())
        return self.transform(image), int(self.labels[index])


def run_conventional(
    dataset: LongTailedDataset,
    epochs: int,
    total_epochs: int = 200,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 2e-4,
    workers: int = 4,
    device: str = "cuda",
) -> dict:
    """Train ``epochs`` epochs of the standard recipe (schedule of ``total_epochs``); time each."""
    normalize = transforms.Normalize(dataset.mean, dataset.std)
    train_tf = transforms.Compose(
        [transforms.RandomCrop(dataset.train.x.shape[-1], padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    train_loader = DataLoader(
        PILArrayDataset(dataset.train.x, dataset.train.y, train_tf),
        batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=True, persistent_workers=workers > 0,
    )
    test_loader = DataLoader(
        PILArrayDataset(dataset.test.x, dataset.test.y, test_tf),
        batch_size=100, shuffle=False, num_workers=workers, pin_memory=True, persistent_workers=workers > 0,
    )
    model = build_model("resnet32", dataset.num_classes, in_channels=dataset.train.x.shape[1]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = ScheduleConfig(name="multistep", warmup_epochs=5, milestones=[160, 180], gamma=0.1)
    epoch_seconds, test_acc = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(epochs):
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr * epoch_factor(schedule, epoch, total_epochs, lr)
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in train_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = model(x)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * y.size(0)  # the per-step meters of the reference code
                correct += (out.argmax(1) == y).sum().item()
                seen += y.size(0)
            model.eval()
            hits, total = 0, 0
            with torch.no_grad():
                for x, y in test_loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    hits += (model(x).argmax(1) == y).sum().item()
                    total += y.size(0)
            test_acc = 100.0 * hits / total
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, Path(tmp) / "ckpt.pth.tar")
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            epoch_seconds.append(time.perf_counter() - start)
    return {"epoch_seconds": epoch_seconds, "test_top1_after": test_acc, "images_per_epoch": len(dataset.train)}
