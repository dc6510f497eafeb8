"""Evaluate a model on a device-resident split: large batches, counts kept on the device."""
from __future__ import annotations

import torch

from ..data.gpu_augment import Normalize
from ..eval.metrics import ConfusionAccumulator, EvalResult
from ..models.factory import LTModel
from .device import Runtime


@torch.no_grad()
def predict_logits(
    model: LTModel,
    inputs: torch.Tensor,
    runtime: Runtime,
    mean=None,
    std=None,
    batch_size: int = 1000,
) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, on the device) of ``inputs`` (uint8 images or float features)."""
    was_training = model.training
    model.eval()
    outputs = []
    normalize = Normalize(mean, std).to(inputs.device) if inputs.dtype == torch.uint8 else None
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start : start + batch_size]
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
    inputs: torch.Tensor,
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
