"""The evaluation protocol: frozen features, k-NN and linear probes, ``evaluate`` (the model-card protocol), and
the model card's figures (``figures``)."""
