"""Scorer service: face attribute scores from ONNX Runtime models and user plug-ins."""
