"""The workstation side: PyTorch model -> checked ONNX bundle (model.onnx + manifest + parity)."""
