"""How handlers answer JSON: plain dicts (`model.wire.records` builds them) serialised by orjson.

The bodies' models are `centermask_client.schemas`; the service documents its OpenAPI schema with them but
does not validate its answers through them, which would cost more than the inference on large mask payloads.
"""

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
