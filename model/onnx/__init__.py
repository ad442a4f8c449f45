"""ONNX: the graph contract (`contract`), the export (`export`) and the onnxruntime engine (`engine`)."""
