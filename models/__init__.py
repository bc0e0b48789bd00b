"""Trainable models: the rate-coded MLP and CNN, its deterministic training, ONNX export and evaluation;
the recurrent rate network (one step of delay per connection), its training and IR export;
the recurrent LIF sequence models (rate, surrogate-gradient, nn.RNN baseline; models.sequence)."""

from spikeforge.models.cnn import RateCNN
from spikeforge.models.mlp import RateMLP
from spikeforge.models.recurrent import RecurrentRateNet, save_recurrent, to_graph, train_recurrent
from spikeforge.models.sequence import (RecurrentLIFRate, RecurrentLIFSurrogate, VanillaRNN,
                                       sequence_payloads, spiking_copy, train_sequence)
from spikeforge.models.sequence import to_graph as sequence_to_graph
from spikeforge.models.train import evaluate, evaluate_onnx, export_onnx, predict_onnx, train_cnn, train_mlp

__all__ = ["RateMLP", "train_mlp", "RateCNN", "train_cnn", "export_onnx", "evaluate_onnx", "evaluate", "predict_onnx",
           "RecurrentRateNet", "train_recurrent", "to_graph", "save_recurrent",
           "RecurrentLIFRate", "RecurrentLIFSurrogate", "VanillaRNN", "train_sequence", "sequence_payloads",
           "sequence_to_graph", "spiking_copy"]
