"""Webdataset shards in the CLIP_benchmark layout, streamed (no folder scan):

    <folder>/classnames.txt                          one class name per line, label order
    <folder>/zeroshot_classification_templates.txt   optional: one template per line, "{c}" for the class name
    <folder>/<split>/0.tar, 1.tar, ...               samples: <key>.{webp,jpg,png,...} + <key>.cls (label)
    <folder>/<split>/nshards.txt                     optional: the number of shards
    <folder>/<split>/count.txt                       optional: the number of samples (DataComp's resharder)

Nothing in this layout declares how many samples a split has, so each shard is checked as it is
streamed (`tar_problem`): its headers must chain to tar's end-of-archive block. A shard cut inside a
member, or at a member boundary (which tarfile would read as a shorter, valid archive), or with a
damaged header (where tarfile silently stops) fails with one line naming it, instead of evaluating
part of the split.

``wds:<folder>`` names such a folder wherever a dataset name is accepted (`load_dataset`, ``vlprompt
eval --dataset``, an experiment's ``dataset.name``). `read_wds_dataset` gives a `WdsDataset` whose
``split(name)`` is a lazy `WdsSplit`: nothing is listed or decoded until the engine streams it
(`vlprompt.engine.features.stream_image_features`), so a split never has to fit in a file listing.
Few-shot training on shards is in `vlprompt.data.webdataset_fewshot` (only the K sampled images per
class are extracted to files).

Written against webdataset's public API only (runs on 0.2.x and 1.x).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset

from vlprompt.data.fgvc import read_lines
from vlprompt.data.folder import DEFAULT_TEMPLATE
from vlprompt.data.images import ImageDecodeError, unwrap_worker_message
from vlprompt.errors import VLPromptError
from vlprompt.prompts.templates import check_template

IMAGE_KEYS = ("webp", "jpg", "jpeg", "png", "ppm", "bmp")
BLOCK = 512  # tar's block: headers, member data (padded) and the end-of-archive marker are whole blocks
_ZERO_BLOCK = bytes(BLOCK)
# members whose data tarfile does not skip, whatever their size field says
_NO_DATA_TYPES = frozenset(
    {tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE}
)
_MAX_TAIL = 1 << 20  # after the end-of-archive block a tar holds zero padding (a 10 KiB record at most)


class WdsError(VLPromptError):
    """A shard or sample that cannot be read; the message names it. Raised in a DataLoader worker, it
    reaches the main process as the same one line (see `unwrap_worker_message`)."""

    def __init__(self, message: str) -> None:
        super().__init__(unwrap_worker_message(message))


@dataclass
class WdsInfo:
    folder: Path
    classnames: list[str]
    templates: list[str]  # with "{}" for the class name (CLIP_benchmark writes "{c}")
    shards: dict[str, list[Path]]
    counts: dict[str, int] = field(default_factory=dict)  # split -> declared samples (count.txt)


def _declared_count(split_dir: Path) -> int | None:
    path = split_dir / "count.txt"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if not text.isdigit():
        raise VLPromptError(f"{path} must hold the split's number of samples, got {text[:40]!r}")
    return int(text)


def read_wds_info(folder: str | Path) -> WdsInfo:
    """Class names, templates and the shards of every split; names what is missing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise VLPromptError(f"webdataset folder not found: {folder}")
    classnames = read_lines(folder / "classnames.txt", "class names file")
    template_file = folder / "zeroshot_classification_templates.txt"
    templates = [t.replace("{c}", "{}") for t in read_lines(template_file, "templates file")] if template_file.is_file() else []
    shards: dict[str, list[Path]] = {}
    counts: dict[str, int] = {}
    for split_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        tars = sorted(split_dir.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
        if not tars:
            continue
        count_file = split_dir / "nshards.txt"
        if count_file.is_file():
            expected = int(count_file.read_text().strip() or 0)
            names = {p.name for p in tars}
            missing = [f"{i}.tar" for i in range(expected) if f"{i}.tar" not in names]
            if missing:
                raise VLPromptError(
                    f"webdataset split {split_dir}: {len(missing)} of {expected} shards listed by nshards.txt are "
                    f"missing (e.g. {split_dir / missing[0]})"
                )
        shards[split_dir.name] = tars
        declared = _declared_count(split_dir)
        if declared is not None:
            counts[split_dir.name] = declared
    if not shards:
        raise VLPromptError(f"webdataset folder {folder} has no <split>/*.tar shards")
    return WdsInfo(folder, classnames, templates, shards, counts)


def image_key(names: Sequence[str]) -> str | None:
    """The image among a sample's extensions (first of IMAGE_KEYS, as webdataset decoding would pick)."""
    return next((k for k in IMAGE_KEYS if k in names), None)


def parse_label(raw: bytes | str | int, where: str, num_classes: int) -> int:
    """A ``.cls`` payload as a label in 0..num_classes-1; `where` names the sample and shard."""
    try:
        label = int(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError):
        raise WdsError(f"{where}: label {raw!r:.40} is not an integer") from None
    if not 0 <= label < num_classes:
        raise WdsError(f"{where}: label {label} is outside 0..{num_classes - 1} (classnames.txt)")
    return label


def decode_image(data: bytes, where: str) -> Image.Image:
    """Image bytes as an RGB PIL image (as `load_image` opens files); errors name the sample."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageDecodeError(f"cannot decode image of {where}: {reason}") from None


def tar_problem(path: str | os.PathLike) -> str | None:
    """What makes the tar at `path` incomplete, or None when its member headers chain to the
    end-of-archive block with only zero padding after it.

    tarfile cannot tell: it reads a tar cut at a member boundary as a shorter valid archive, and stops
    without a word at a damaged header after the first. One 512-byte read per member (seeking past the
    data) and a read of the tail: milliseconds for a shard whose images take seconds to decode.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return "is empty (0 bytes)"
            offset = 0
            while True:
                handle.seek(offset)
                header = handle.read(BLOCK)
                if not header:
                    return f"is truncated: it ends after {offset} bytes without tar's end-of-archive block"
                if len(header) < BLOCK:
                    return f"is truncated: it ends inside a tar header at byte {offset}"
                if header == _ZERO_BLOCK:
                    break
                try:
                    info = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
                except tarfile.HeaderError as error:
                    return f"has a damaged tar header at byte {offset} ({error})"
                data = 0 if info.type in _NO_DATA_TYPES else -(-info.size // BLOCK) * BLOCK  # as tarfile skips
                end = offset + BLOCK + data
                if end > size:
                    return (f"is truncated: member {info.name} (byte {offset}) needs {end - offset} bytes, "
                            f"{size - offset} are left")
                offset = end
            tail = size - offset - BLOCK
            if tail > _MAX_TAIL or handle.read(tail).count(0) != tail:
                return f"has data after its end-of-archive block at byte {offset} (a lost header?)"
    except OSError as error:
        return f"cannot be read: {error.strerror or error}"
    return None


def checked_shard_samples(shards: Iterable[dict]) -> Iterator[dict]:
    """webdataset's ``tarfile_to_samples`` stage, one shard at a time: a shard is first checked whole
    (`tar_problem`), and any error reading it is one `WdsError` naming it, never a tarfile traceback."""
    import webdataset as wds

    expand = wds.tarfile_to_samples()
    for shard in shards:
        url = shard["url"]
        problem = tar_problem(url)
        if problem:
            raise WdsError(f"webdataset shard {url} {problem}")
        try:
            yield from expand(iter([shard]))
        except (tarfile.TarError, OSError, EOFError) as error:
            reason = str(error.args[0]) if error.args else type(error).__name__
            raise WdsError(f"webdataset shard {url} cannot be read: {reason.split(' @ ')[0]}") from None


def _check_sample(sample: dict, where: str) -> str:
    key = image_key(list(sample))
    if key is None or "cls" not in sample:
        raise WdsError(f"{where}: expected an image ({'/'.join(IMAGE_KEYS)}) and a .cls label, got {sorted(sample)}")
    return key


def _decode(sample: dict, shard: str, num_classes: int) -> tuple[Image.Image, int]:
    where = f"sample {sample.get('__key__', '?')} in {shard}"
    key = _check_sample(sample, where)
    label = parse_label(sample["cls"], where, num_classes)
    return decode_image(sample[key], where), label


class WdsClassification(IterableDataset):
    """Streams ``(image_tensor, label, index)`` from one split's shards, split across DataLoader workers
    (and ranks, through webdataset's node splitter, unless `split_by_node` is False).

    `labels`, if given, keeps only samples with those labels, relabelled 0..k-1 in that order (the
    label is read before the image, so skipped samples are never decoded).
    """

    def __init__(
        self,
        info: WdsInfo,
        split: str,
        transform: Callable,
        labels: Sequence[int] | None = None,
        split_by_node: bool = True,
    ) -> None:
        if split not in info.shards:
            raise VLPromptError(f"webdataset {info.folder} has no split {split!r}. Valid: {', '.join(info.shards)}")
        self.info, self.split, self.transform = info, split, transform
        self.relabel = {old: new for new, old in enumerate(labels)} if labels is not None else None
        self.split_by_node = split_by_node

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, int]]:
        import webdataset as wds

        urls = [str(p) for p in self.info.shards[self.split]]
        stages = [wds.SimpleShardList(urls)]
        if self.split_by_node:
            stages.append(wds.split_by_node)
        pipeline = wds.DataPipeline(*stages, wds.split_by_worker, checked_shard_samples)
        num_classes = len(self.info.classnames)
        index = 0
        for sample in pipeline:
            where = f"sample {sample.get('__key__', '?')} in {sample.get('__url__', self.split)}"
            key = _check_sample(sample, where)
            label = parse_label(sample["cls"], where, num_classes)
            if self.relabel is not None:
                if label not in self.relabel:
                    continue
                label = self.relabel[label]
            yield self.transform(decode_image(sample[key], where)), label, index
            index += 1


@dataclass(frozen=True, eq=False)
class WdsSplit:
    """One split of a webdataset, lazily: the engine streams it (`image_dataset`), nothing is listed.

    It has no length and no file paths, so it is not a list of `Item`s: `evaluate_zero_shot`,
    `predict_logits` and `evaluate_method` recognise it and stream it (labels come from the stream).
    `labels` restricts it to some classes, relabelled 0..k-1 in that order (base-to-new halves).
    """

    info: WdsInfo
    split: str
    labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.split not in self.info.shards:
            raise VLPromptError(
                f"webdataset {self.info.folder} has no split {self.split!r}. Valid: {', '.join(self.info.shards)}"
            )

    @property
    def source(self) -> str:
        return str(self.info.folder / self.split)

    @property
    def shards(self) -> list[Path]:
        return list(self.info.shards[self.split])

    def image_dataset(self, transform: Callable) -> WdsClassification:
        """``(transform(image), label, index)`` over the whole split on every rank (evaluation is not
        sharded across ranks, as for item lists); DataLoader workers share the shards."""
        return WdsClassification(self.info, self.split, transform, labels=self.labels, split_by_node=False)

    def check_count(self, streamed: int) -> None:
        """After a whole pass: the samples streamed must be what ``count.txt`` declares (a shard cut
        at a member boundary and closed again is a valid, shorter tar: only the count shows it)."""
        declared = self.info.counts.get(self.split)
        if declared is None or self.labels is not None or streamed == declared:
            return
        raise WdsError(
            f"webdataset split {self.source}: read {streamed} of the {declared} samples its count.txt declares; "
            "a shard is missing or was cut short (check the shards, or fix count.txt)"
        )

    def subset(self, labels: Sequence[int]) -> WdsSplit:
        """Only the samples of `labels` (labels of this split), relabelled 0..k-1 in that order."""
        chosen = tuple(int(label) for label in labels)
        if self.labels is not None:
            chosen = tuple(self.labels[label] for label in chosen)
        return WdsSplit(self.info, self.split, chosen)

    def __repr__(self) -> str:
        classes = f", {len(self.labels)} classes" if self.labels is not None else ""
        return f"WdsSplit({self.source}, {len(self.shards)} shards{classes})"


@dataclass
class WdsDataset:
    """A ``wds:<folder>`` dataset: class names, templates and lazy splits (see `WdsSplit`).

    It stands where a `ClassificationDataset` does for evaluation; ``template`` is the first of
    ``templates`` (the folder's templates file, or "a photo of a {}." without one), and the "dataset"
    template spec gives all of them.
    """

    name: str
    root: Path
    classnames: list[str]
    templates: list[str]
    info: WdsInfo

    @property
    def template(self) -> str:
        return self.templates[0]

    @property
    def source(self) -> str:
        return str(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def split_names(self) -> list[str]:
        return list(self.info.shards)

    def split(self, name: str) -> WdsSplit:
        """A lazy split; an unknown name lists the valid ones."""
        return WdsSplit(self.info, name)


def read_wds_dataset(folder: str | Path, name: str | None = None) -> WdsDataset:
    """The dataset behind ``wds:<folder>``: reads the class names and templates, lists the shards."""
    info = read_wds_info(folder)
    if not info.classnames:
        raise VLPromptError(f"class names file {info.folder / 'classnames.txt'} is empty")
    where = f"templates file {info.folder / 'zeroshot_classification_templates.txt'}"
    templates = [check_template(t, where) for t in info.templates] or [DEFAULT_TEMPLATE]
    return WdsDataset(name or info.folder.name, info.folder, list(info.classnames), templates, info)
