"""Frozen features computed once: L2-normalised image features and ensembled class text features."""

from __future__ import annotations

import functools
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from vlprompt.backbones.base import Backbone
from vlprompt.data.classification import ImageItems, Item
from vlprompt.data.images import decode_plain_png


@functools.cache
def _to_tensor_types() -> tuple[type, ...]:
    """The ToTensor step types the fast path recognises (torchvision/open_clip loaded on first use)."""
    from torchvision import transforms as T

    types: list[type] = [T.ToTensor]
    try:
        from open_clip.transform import MaybeToTensor

        types.append(MaybeToTensor)
    except ImportError:  # pragma: no cover - open_clip is a dependency
        pass
    return tuple(types)


def show_progress(progress: bool) -> bool:
    """Bars only for a person watching: off when asked, or when stderr is not a terminal (logs, CI)."""
    return progress and sys.stderr.isatty()


def extract_image_features(
    backbone: Backbone,
    items: Sequence[Item],
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    source: str | None = None,
) -> torch.Tensor:
    """Encode every item's image once: ``[N, D]`` fp32, L2-normalised, in item order, on the CPU.

    `transform` defaults to the backbone's eval transform; `source` (the split file) is named in
    decode errors. The result is an ordinary tensor (cloned out of inference mode), so training
    code may use it in autograd graphs.
    """
    with torch.inference_mode():
        features = _encode_images(backbone, items, transform, batch_size, num_workers, progress, source)
    return features.clone()


@runtime_checkable
class StreamedSplit(Protocol):
    """A split read as a stream (e.g. a `WdsSplit` of webdataset shards): no paths, no length, labels
    only known as the samples go by. ``image_dataset(transform)`` yields ``(image, label, index)``."""

    def image_dataset(self, transform: Callable) -> IterableDataset: ...


def stream_image_features(
    backbone: Backbone,
    split: StreamedSplit,
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a streamed split once: ``([N, D] fp32 L2-normalised features, [N] labels)``, in stream order.

    The same batch pipeline as `extract_image_features` (per-image transform in the loader, ToTensor
    scaling and Normalize per batch, `prefetch`, `prepare_images`), so equal images give equal
    features. Not cached: `FeatureCache` keys entries by image file (path, mtime, size), which a
    stream does not have; a streamed split is encoded anew each time.
    """
    features, labels = [], []
    with torch.inference_mode():
        for images, batch_labels in image_batches(backbone, split.image_dataset, transform, batch_size, num_workers, progress):
            features.append(encode_normalized(backbone, images).cpu())
            labels.append(batch_labels.long().cpu())
    check_count = getattr(split, "check_count", None)  # a split that declares its size (count.txt)
    if check_count is not None:
        check_count(sum(len(batch) for batch in labels))
    if not features:
        return torch.empty(0, backbone.identity.embed_dim), torch.empty(0, dtype=torch.long)
    return torch.cat(features).clone(), torch.cat(labels)


def features_and_labels(
    backbone: Backbone,
    items: Sequence[Item] | StreamedSplit,
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    source: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features and labels of a list of items or of a streamed split (labels from the stream)."""
    if isinstance(items, StreamedSplit):
        return stream_image_features(backbone, items, transform, batch_size, num_workers, progress)
    features = extract_image_features(backbone, items, transform, batch_size, num_workers, progress, source)
    return features, torch.tensor([int(item.label) for item in items], dtype=torch.long)


def image_precision(device: torch.device | str) -> str:
    """How frozen image features are computed: bf16 autocast on CUDA GPUs that support it (about twice
    the encoder throughput; features are L2-normalised fp32 either way), fp32 elsewhere. Part of the
    feature cache's key, so features of the two precisions never mix."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def encode_normalized(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` fp32 L2-normalised image features, at `image_precision` of the backbone's device."""
    if image_precision(images.device) == "bf16":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            encoded = backbone.encode_image(images)
    else:
        encoded = backbone.encode_image(images)
    return F.normalize(encoded.float(), dim=-1)


def resolve_num_workers(num_workers: int | None, device: torch.device | str) -> int:
    """DataLoader worker processes for a streamed pass (None: automatic).

    On CUDA the encoder is fast, so decoding gets worker processes (up to 8, leaving a core to
    the main process). On the CPU the cores are the encoder's: no worker processes; decoding
    overlaps encoding in a background thread instead (see `prefetch`).
    """
    if num_workers is not None:
        return max(0, int(num_workers))
    if torch.device(device).type == "cuda":
        import os

        return max(0, min(8, (os.cpu_count() or 1) - 1))
    return 0


def prepare_images(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """A batch on the backbone's device, laid out for its encoder (channels-last on CUDA)."""
    images = images.to(backbone.device, non_blocking=True)
    if images.device.type == "cuda" and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


class _Uint8Head:
    """The per-image part of a transform that ends in ToTensor + Normalize: PIL steps, then the
    pixels as a uint8 CHW tensor (or, for images ToTensor would not read as 8-bit, its float
    output). `finish_batch` does ToTensor's scaling and Normalize on the whole batch at once:
    the same elementwise operations, so the result is bit-identical to the per-image transform.
    """

    def __init__(self, steps: Sequence[Callable], to_tensor: Callable) -> None:
        self.steps = list(steps)
        self.to_tensor = to_tensor
        self.identity_size = identity_size(self.steps)

    def __call__(self, image):
        for step in self.steps:
            image = step(image)
        if isinstance(image, Image.Image) and image.mode in ("RGB", "L", "RGBA", "CMYK", "P"):
            pixels = torch.from_numpy(np.array(image, np.uint8, copy=True))
            pixels = pixels.view(image.size[1], image.size[0], len(image.getbands()))
            return pixels.permute(2, 0, 1).contiguous()
        return self.to_tensor(image)


def _is_rgb_conversion(step: Callable) -> bool:
    try:
        from open_clip.transform import MaybeConvertMode, _convert_to_rgb
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return False
    return (isinstance(step, MaybeConvertMode) and step.mode == "RGB") or step is _convert_to_rgb


def identity_size(steps: Sequence[Callable]) -> tuple[int, int] | None:
    """The (width, height) at which every PIL step leaves an RGB image unchanged; None if unknown.

    Recognised: Resize to a square side (torchvision returns the image itself when the size already
    matches), CenterCrop of that side, and open_clip's conversions to RGB. Eval transforms are
    usually exactly these, so images stored at the model's resolution need no PIL work at all.
    """
    from torchvision import transforms as T

    side = None
    for step in steps:
        if type(step) is T.Resize and step.max_size is None:
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            if len(size) == 2 and size[0] == size[1]:
                size = size[:1]
            if len(size) != 1 or (side is not None and side != size[0]):
                return None
            side = size[0]
        elif type(step) is T.CenterCrop:
            height, width = step.size
            if height != width or (side is not None and side != height):
                return None
            side = height
        elif not _is_rgb_conversion(step):
            return None
    return (side, side) if side is not None else None


def split_transform(transform: Callable) -> tuple[Callable, Callable[[torch.Tensor], torch.Tensor]] | None:
    """(per-image part, batch part) of a Compose ending in ToTensor, Normalize; None otherwise."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or not steps or len(steps) < 2:
        return None
    to_tensor, normalize = steps[-2], steps[-1]
    if type(to_tensor) not in _to_tensor_types() or type(normalize) is not T.Normalize or normalize.inplace:
        return None
    mean, std = normalize.mean, normalize.std

    def finish_batch(images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.to(torch.get_default_dtype()).div(255)
        m = torch.as_tensor(mean, dtype=images.dtype, device=images.device)
        s = torch.as_tensor(std, dtype=images.dtype, device=images.device)
        if (s == 0).any():
            raise ValueError(f"std evaluated to zero after conversion to {images.dtype}, leading to division by zero.")
        if m.ndim == 1:
            m = m.view(-1, 1, 1)
        if s.ndim == 1:
            s = s.view(-1, 1, 1)
        return images.sub(m).div_(s)

    return _Uint8Head(steps[:-2], to_tensor), finish_batch


class _StreamedItems(ImageItems):
    """`ImageItems` for a `_Uint8Head`: plain 8-bit RGB PNGs already at the identity size skip PIL
    (same pixels, see `decode_plain_png`); everything else goes through the usual path."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        size = getattr(self.transform, "identity_size", None)
        if size is not None:
            pixels = decode_plain_png(item.path, size)
            if pixels is not None:
                return pixels, item.label, index
        return super().__getitem__(index)


def _collate_uint8(batch):
    """Stack a batch made by `_Uint8Head`; mixed uint8/float images are scaled like ToTensor."""
    images = [image for image, _, _ in batch]
    if any(image.dtype != torch.uint8 for image in images):
        images = [image.to(torch.get_default_dtype()).div(255) if image.dtype == torch.uint8 else image
                  for image in images]
    labels = torch.tensor([label for _, label, _ in batch])
    index = torch.tensor([i for _, _, i in batch])
    return torch.stack(images), labels, index


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def prefetch(iterable: Iterable, depth: int = 2) -> Iterator:
    """Iterate `iterable` in a background thread, `depth` items ahead of the consumer.

    Image decoding (PIL) and tensor transforms release the GIL, so the next batches are made
    while the caller encodes the current one. Errors are re-raised in the caller, unchanged;
    if the caller stops early the thread is told to stop.
    """
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for value in iterable:
                if not put(value):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put(_Raised(error))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="vlprompt-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = slots.get()
            if value is _DONE:
                return
            if isinstance(value, _Raised):
                raise value.error
            yield value
    finally:
        stop.set()
        thread.join()


def image_batches(
    backbone: Backbone,
    make_dataset: Callable[[Callable], Dataset],
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int | None = 0,
    progress: bool = True,
    desc: str = "image features",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images ready for the encoder, labels)`` batches of ``make_dataset(per-image transform)``.

    `transform` (default: the backbone's eval transform) is split when it ends in ToTensor, Normalize:
    the per-image part runs in the loader (worker processes, or a `prefetch` thread), the scaling and
    Normalize once per batch on the device. Item lists and streamed splits share this pipeline.
    """
    device = backbone.device
    workers = resolve_num_workers(num_workers, device)
    transform = transform or backbone.eval_transform
    split = split_transform(transform)
    # ToTensor's scaling and Normalize run once per batch (on the device), not once per image
    head, finish = split if split else (transform, None)
    dataset = make_dataset(head)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=_collate_uint8 if split else None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    # worker processes already run ahead; in-process loading is moved to a thread
    batches = loader if workers else prefetch(loader, depth=2)
    total = None if isinstance(dataset, IterableDataset) else len(loader)
    bar = tqdm(batches, desc=desc, unit="batch", disable=not show_progress(progress), leave=False, total=total)
    for images, labels, _ in bar:
        images = prepare_images(backbone, images)
        if finish is not None:
            images = finish(images)
        yield images, labels


def _encode_images(
    backbone: Backbone,
    items: Sequence[Item],
    transform: Callable | None,
    batch_size: int,
    num_workers: int | None,
    progress: bool,
    source: str | None,
) -> torch.Tensor:
    def make_dataset(head: Callable) -> Dataset:
        return _StreamedItems(items, head, source)

    features = []
    for images, _ in image_batches(backbone, make_dataset, transform, batch_size, num_workers, progress):
        features.append(encode_normalized(backbone, images).cpu())
    if not features:
        return torch.empty(0, backbone.identity.embed_dim)
    return torch.cat(features)
