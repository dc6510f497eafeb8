"""Encoders (ResNet-32 for CIFAR, torchvision backbones) and classifier heads."""
from .factory import ENCODERS, LTModel, build_model
from .heads import HEADS

__all__ = ["ENCODERS", "HEADS", "LTModel", "build_model"]
