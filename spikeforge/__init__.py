"""spikeforge: rate-trained ANN -> quantized spiking IF/LIF graph -> cpu, Brian2, Lava, Loihi 2."""

__version__ = "0.1.0"
