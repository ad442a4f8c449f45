"""Inference: from an image to `Detections`. Options and loading (`options`, `load`), decoding and
preprocessing, the engines that run the network (`engine`, `dense`, `quantize`, `fusion`), the weight-free
postprocessing, mask pasting, and the `Predictor` that runs them in order."""
