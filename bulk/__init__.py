"""Bulk inference: a whole dataset segmented on Ray Data, resumably, each image exactly once.

`centermask-bulk` (`bulk.cli`) reads images from folders, globs, COCO annotation files, lists of paths or
fsspec URLs (`bulk.inputs`), decodes them in parallel tasks and segments them in a pool of actors holding one
Predictor each (`bulk.stages`, `bulk.pipeline`), and writes one row per image into shards, with a manifest
that makes a killed run resumable (`bulk.shards`, `bulk.manifest`, `bulk.storage`), then COCO results
(`bulk.coco`). Ray is the optional extra `[bulk]`; only `bulk.pipeline` imports it. docs/bulk.md has the
guide, from a laptop to a KubeRay cluster.
"""
