"""The service's own HTTP API, one router per resource: `segment` (images in, instances out), `model`
(what is served), `probes` (liveness, readiness, metrics) and `pages` (the demo page)."""
