"""Serving encoders over HTTP (LitServe) and exporting them to ONNX."""
