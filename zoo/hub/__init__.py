"""Where encoders come from and go to: the registry, explicit sources and ``load``, Hub downloads with
verification, publishing (Hub or bundled), and the training run directory that publishing reads.

Importing this package imports none of its modules: ``huggingface_hub`` loads only with the module
that needs it (``download``, ``publish``).
"""
