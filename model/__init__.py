"""CenterMask as a library: the network (`network`), inference (`inference`), ONNX (`onnx`), the wire format
on the model's side (`wire`), the bundled weights and the checkpoint format (`weights`), and two command
lines (`predict`, `export`). docs/architecture.md maps every module; docs/model-api.md is the API.
"""

from model import _moved

# Names from before the present layout keep working (model/_moved.py).
_moved.install()
