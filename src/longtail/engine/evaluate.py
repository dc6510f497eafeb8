"""Evaluate a model on a device-resident or file-backed split: large batches, counts kept on the device."""
from __future__ import annotations

import torch

from ..data.files import FileSplit
from ..data.gpu_augment import Normalize
from ..eval.metrics import ConfusionAccumulator, EvalResult
from ..models.factory import LTModel
from .device import Runtime
from .file_source import eval_batches


@torch.no_grad()
def predict_logits(
    model: LTModel,
    inputs: torch.Tensor | FileSplit,
    runtime: Runtime,
    mean=None,
    std=None,
    batch_size: int = 1000,
) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, on the device) of ``inputs`` (uint8 images or float features on
    the device, or a file-backed split read by a DataLoader)."""
    was_training = model.training
    model.eval()
    outputs = []
    if isinstance(inputs, FileSplit):
        batches = eval_batches(inputs, batch_size, runtime, mean, std)
    else:
        normalize = Normalize(mean, std).to(inputs.device) if inputs.dtype == torch.uint8 else None
        batches = (inputs[start : start + batch_size] for start in range(0, inputs.shape[0], batch_size))
    for x in batches:
        if x.dtype == torch.uint8:
            x = normalize(x)
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            outputs.append(model(x).float())
    model.train(was_training)
    return torch.cat(outputs)


def evaluate_model(
    model: LTModel,
    inputs: torch.Tensor | FileSplit,
    labels: torch.Tensor,
    class_counts,
    runtime: Runtime,
    mean=None,
    std=None,
    batch_size: int = 1000,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> EvalResult:
    """Top-1, many/medium/few, per-class accuracy, ECE and confusion of ``model`` on a split."""
    accumulator = ConfusionAccumulator(len(class_counts), runtime.device)
    logits = predict_logits(model, inputs, runtime, mean, std, batch_size)
    accumulator.update(logits, labels)
    return accumulator.compute(class_counts, many_threshold, few_threshold)
