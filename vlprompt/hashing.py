"""File digests, standard library only: the backbones hash weight files with them (`BackboneIdentity`)
and the zoo verifies downloads with them, so reading the zoo registry needs no torch."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """Full sha256 hex digest of a file, read in 1 MiB blocks (the zoo verifies whole digests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
