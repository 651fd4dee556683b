"""Interop with the tools CLIP users already have: CLIP_benchmark's result files, the official
CoOp-family releases (prompt checkpoints), plain open_clip checkpoints of the world model, webdataset
shards. Nothing in the library imports this package; the commands and the user do."""
