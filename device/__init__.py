"""On-device runtime: what runs on the Raspberry Pi or wearable. Never imports onnx or torch."""
