"""The churn model: ONNX at serving time, its split thresholds, shadow comparison, training."""
