"""DDP under torchrun on the CPU (gloo): 2 ranks end identical and equal a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import colour_items

from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.slow  # end to end: excluded by `make test-fast`, run by `make test` and CI

CLASSES = ["red", "green", "blue"]

WORKER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn

    from vlprompt.backbones import create_backbone
    from vlprompt.data.classification import Item
    from vlprompt.engine.cache import FeatureCache
    from vlprompt.engine.trainer import TrainConfig, Trainer
    from vlprompt.methods.base import MethodConfig, PromptMethod


    class ToyMethod(PromptMethod):
        name = "toy"

        def __init__(self, backbone, classnames, seed):
            super().__init__(backbone, classnames, MethodConfig())
            g = torch.Generator().manual_seed(seed)
            self.text = nn.Parameter(0.1 * torch.randn(len(classnames), backbone.identity.embed_dim, generator=g))

        def class_features(self):
            return F.normalize(self.text, dim=-1)


    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(0)
    backbone = create_backbone("vlprompt-test-vit")
    items = [Item(Path(p), label, name) for p, label, name in spec["items"]]
    rank = int(__import__("os").environ["RANK"])
    method = ToyMethod(backbone, spec["classes"], seed=10 + rank)  # DDP must broadcast rank 0's init
    cache = FeatureCache(spec["cache"], progress=False)
    trainer = Trainer(method, TrainConfig(**spec["config"]), cache=cache)
    result = trainer.fit(items, items)
    torch.save({"text": method.text.detach(), "result": result["train"], "val": result["val"],
                "computed": cache.computed},
               Path(spec["out"]) / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
    """
)


def make_items(folder, n_per_class=4, size=40):
    return colour_items(folder, CLASSES, n_per_class, size)


def test_two_gloo_ranks_match_one_process(tiny_vit, tmp_path):
    items = make_items(tmp_path / "images")
    cfg = dict(epochs=3, batch_size=4, lr=0.5, warmup_epochs=1, warmup_lr=0.05, seed=3, augment_views=2,
               progress=False, device="cpu", output_dir=str(tmp_path / "ddp"))
    spec = {
        "items": [[str(i.path), i.label, i.classname] for i in items],
        "classes": CLASSES,
        "config": cfg,
        "cache": str(tmp_path / "cache"),
        "out": str(tmp_path),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(tmp_path / "spec.json")],
        env=env, capture_output=True, text=True, timeout=900,  # two torch processes on a busy 2-core box
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["text"], ranks[1]["text"])
    same = [{k: v for k, v in r["result"].items() if k != "seconds"} for r in ranks]
    assert same[0] == same[1] and ranks[0]["val"] == ranks[1]["val"]
    assert (tmp_path / "ddp" / "last.pt").is_file() and (tmp_path / "ddp" / "result.json").is_file()
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 3  # rank 0 only
    # The cache was built by both ranks: 2 augmented views + 1 eval view of 12 items, split 18 / 18.
    assert [r["computed"] for r in ranks] == [18, 18]
    shards = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(shards) == 2  # rank 0 wrote the gathered training views and validation view
    fresh = FeatureCache(tmp_path / "fresh", progress=False)
    for transform, views in ((tiny_vit.train_transform, 2), (tiny_vit.eval_transform, 1)):
        built = FeatureCache(tmp_path / "cache", progress=False)
        torch.testing.assert_close(built.get(tiny_vit, items, transform, views),
                                   fresh.get(tiny_vit, items, transform, views), rtol=0, atol=1e-6)
        assert built.computed == 0  # every entry the ranks built is found by a single process

    # The same global batch in one process (tiny_vit is built with the same seed as the workers).
    single_cfg = TrainConfig(**{**cfg, "output_dir": str(tmp_path / "single")})
    method = _toy(tiny_vit, seed=10)
    result = Trainer(method, single_cfg, cache=FeatureCache(tmp_path / "cache", progress=False)).fit(items, items)
    torch.testing.assert_close(ranks[0]["text"], method.text.detach(), rtol=1e-5, atol=1e-6)
    assert abs(ranks[0]["result"]["loss"] - result["train"]["loss"]) < 1e-5
    assert ranks[0]["result"]["acc"] == result["train"]["acc"]
    assert ranks[0]["val"]["top1"] == result["val"]["top1"]


def _toy(backbone, seed):
    namespace: dict = {}
    exec(WORKER.split("spec = json.loads")[0], namespace)  # the worker's ToyMethod, without running it
    return namespace["ToyMethod"](backbone, CLASSES, seed=seed)
