"""The evaluation protocol: frozen features, k-NN and linear probes, and ``evaluate``, the model-card protocol."""
