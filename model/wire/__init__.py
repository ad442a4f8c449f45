"""The wire format on the model's side: records, envelopes and mask encodings built from detections.

The models of every body are `centermask_client.schemas` (the client's distribution); `records` builds them,
`rle` and `polygons` encode masks, `selectors` reads `classes=`.
"""

from model.wire.records import image_record, instances_to_json
from model.wire.selectors import select_classes

__all__ = ["image_record", "instances_to_json", "select_classes"]
