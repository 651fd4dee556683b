"""Shared fixtures: tiny random backbones (registered open_clip configs), built once per session."""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones import create_backbone


@pytest.fixture(scope="session")
def tiny_vit():
    torch.manual_seed(0)
    return create_backbone("vlprompt-test-vit")


@pytest.fixture(scope="session")
def tiny_rn():
    torch.manual_seed(1)
    return create_backbone("vlprompt-test-rn")


@pytest.fixture(params=["vlprompt-test-vit", "vlprompt-test-rn"], scope="session")
def any_backbone(request, tiny_vit, tiny_rn):
    return {"vlprompt-test-vit": tiny_vit, "vlprompt-test-rn": tiny_rn}[request.param]
