"""The Open Inference Protocol (KServe v2) over HTTP: `models` (its messages and this server's tensors),
`codec` (request and answer bodies), `endpoints` (the routes)."""
