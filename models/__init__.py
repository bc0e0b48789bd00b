"""Trainable models: the rate-coded MLP, its deterministic training, ONNX export and evaluation."""

from spikeforge.models.mlp import RateMLP
from spikeforge.models.train import evaluate, evaluate_onnx, export_onnx, predict_onnx, train_mlp

__all__ = ["RateMLP", "train_mlp", "export_onnx", "evaluate_onnx", "evaluate", "predict_onnx"]
