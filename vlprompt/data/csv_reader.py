"""A user's own labelled images listed in a CSV file: ``csv:<file.csv>``, or ``format: csv`` in a YAML.

The file needs a header row; columns are found by name (any order, case-insensitive, extra columns
ignored), comma-separated, UTF-8 with or without a byte-order mark:

- ``path`` (required): the image, relative to the CSV's folder (or to ``image_dir`` in a YAML config),
  or absolute.
- ``label`` (required): either an integer index or a class name; one kind per file.
- ``split`` (optional): ``train``, ``val`` or ``test``. Without the column every row is in ``test``,
  as with ``folder:`` (a list of images is usually something to evaluate on).
- ``classname`` (optional): the readable class name, when ``label`` is an index or an id.

Class names and label order:

- integer labels + ``classnames.txt`` next to the CSV (one name per line): the label indexes that list,
  and every index must be in range; a ``classname`` column, if present, must agree with it;
- integer labels + ``classname`` column: labels must be 0..C-1 without gaps, each with one name;
- class-name labels: classes are the distinct labels in sorted order (as ``folder:`` sorts its class
  folders), so the order does not depend on row order; a ``classname`` column, if present, gives each
  label its readable name (e.g. ``label`` = a WordNet id, ``classname`` = "golden retriever").
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from vlprompt.data.classification import SPLIT_NAMES, ClassificationDataset, Item, verify_images
from vlprompt.data.fgvc import read_lines
from vlprompt.data.folder import DEFAULT_TEMPLATE
from vlprompt.errors import VLPromptError

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("split", "classname")
CLASSNAMES_FILE = "classnames.txt"
DEFAULT_SPLIT = "test"
_INTEGER = re.compile(r"[+-]?\d+")


def _columns_message() -> str:
    return f"required: {', '.join(REQUIRED_COLUMNS)}; optional: {', '.join(OPTIONAL_COLUMNS)}"


def _read_table(csv_file: Path) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """Column index by name, and the non-blank rows with their line numbers."""
    if not csv_file.is_file():
        raise VLPromptError(f"CSV file not found: {csv_file}")
    rows: list[tuple[int, list[str]]] = []
    try:
        # utf-8-sig drops a byte-order mark (Excel writes one); newline="" lets csv handle CRLF and quoted newlines
        with csv_file.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as error:
        raise VLPromptError(f"CSV file {csv_file} is not UTF-8 text: {error}") from None
    except csv.Error as error:
        raise VLPromptError(f"CSV file {csv_file}, line {reader.line_num}: {error}") from None
    if not header or not any(cell.strip() for cell in header):
        raise VLPromptError(f"CSV file {csv_file} is empty: expected a header row ({_columns_message()})")
    names = [cell.strip().lower() for cell in header]
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        if name and columns.setdefault(name, index) != index:
            raise VLPromptError(f"CSV file {csv_file}: column {name!r} appears twice in the header")
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        found = ", ".join(repr(name) for name in names)
        hint = " (columns must be separated by commas)" if len(names) == 1 and re.search(r"[;\t]", names[0]) else ""
        raise VLPromptError(
            f"CSV file {csv_file}: missing column(s) {', '.join(map(repr, missing))}; found {found} ({_columns_message()}){hint}"
        )
    if not rows:
        raise VLPromptError(f"CSV file {csv_file} has a header but no rows")
    for line, row in rows:
        if len(row) != len(header):
            raise VLPromptError(
                f"CSV file {csv_file}, line {line}: {len(row)} cells but the header has {len(header)} columns "
                "(quote values that contain commas)"
            )
    return columns, rows


def _names_by_key(pairs: list[tuple[int, object, str]], where: str) -> dict[object, str]:
    """label -> class name, each label with one name and each name with one label."""
    name_of: dict[object, tuple[str, int]] = {}
    key_of: dict[str, tuple[object, int]] = {}
    for line, key, name in pairs:
        seen_name, seen_line = name_of.setdefault(key, (name, line))
        if seen_name != name:
            raise VLPromptError(f"{where}, line {line}: label {key!r} is {name!r} here but {seen_name!r} on line {seen_line}")
        seen_key, seen_line = key_of.setdefault(name, (key, line))
        if seen_key != key:
            raise VLPromptError(
                f"{where}, line {line}: class {name!r} has label {key!r} here but {seen_key!r} on line {seen_line}"
            )
    return {key: name for key, (name, _) in name_of.items()}


def _classnames(
    labels: list[tuple[int, str]], given: list[tuple[int, str]] | None, names_file: Path | None, where: str
) -> tuple[list[str], list[int]]:
    """Class names in label order and each row's label index (rules in the module docstring)."""
    integer = [_INTEGER.fullmatch(label) is not None for _, label in labels]
    if any(integer) and not all(integer):
        first_int = labels[integer.index(True)]
        first_name = labels[integer.index(False)]
        raise VLPromptError(
            f"{where}: the label column mixes integer labels (line {first_int[0]}: {first_int[1]!r}) and class names "
            f"(line {first_name[0]}: {first_name[1]!r}); use one kind"
        )
    if names_file is not None:
        if not all(integer):
            line, label = labels[integer.index(False)]
            raise VLPromptError(
                f"{where}, line {line}: label {label!r} is not an integer; with {names_file} the labels are indices into it"
            )
        names = read_lines(names_file, "class names file")
        names = [name.removeprefix("\ufeff") for name in names[:1]] + names[1:]  # a byte-order mark, as some editors write
        names = [name for name in names if name]
        if not names:
            raise VLPromptError(f"class names file {names_file} has no names")
        if len(set(names)) != len(names):
            duplicate = next(name for name in names if names.count(name) > 1)
            raise VLPromptError(f"class names file {names_file} lists {duplicate!r} twice")
        indices = []
        for line, label in labels:
            index = int(label)
            if not 0 <= index < len(names):
                raise VLPromptError(
                    f"{where}, line {line}: label {index} is out of range 0..{len(names) - 1} (the names in {names_file})"
                )
            indices.append(index)
        for (line, classname), index in zip(given or [], indices):
            if classname != names[index]:
                raise VLPromptError(
                    f"{where}, line {line}: classname {classname!r} but label {index} is {names[index]!r} in {names_file}"
                )
        return names, indices
    if all(integer):
        if given is None:
            raise VLPromptError(
                f"{where}: the labels are integers but nothing names the classes: put {CLASSNAMES_FILE} (one name per line, "
                "in label order) next to the CSV, add a classname column, or write class names as labels"
            )
        keys = [int(label) for _, label in labels]
        name_of = _names_by_key([(line, key, name) for (line, name), key in zip(given, keys)], where)
        if sorted(name_of) != list(range(len(name_of))):
            raise VLPromptError(
                f"{where}: with a classname column the labels must be 0..{len(name_of) - 1} without gaps; found "
                f"{min(name_of)}..{max(name_of)} with {len(name_of)} distinct labels (or list every class in {CLASSNAMES_FILE})"
            )
        return [name_of[i] for i in range(len(name_of))], keys
    order = sorted({label for _, label in labels})
    index_of = {label: i for i, label in enumerate(order)}
    if given is None:
        return order, [index_of[label] for _, label in labels]
    name_of = _names_by_key([(line, label, name) for (line, label), (_, name) in zip(labels, given)], where)
    return [name_of[label] for label in order], [index_of[label] for _, label in labels]


def read_csv_dataset(
    csv_file: str | Path,
    name: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    image_dir: str | Path | None = None,
    classnames_file: str | Path | None = None,
    verify: bool = False,
) -> ClassificationDataset:
    """Read a CSV of ``path,label[,split][,classname]`` rows (rules in the module docstring).

    `image_dir` (default: the CSV's folder) is what relative paths are relative to; `classnames_file`
    (default: ``classnames.txt`` next to the CSV, when it exists) names integer labels. With `verify`,
    every listed image must exist.
    """
    csv_file = Path(csv_file).expanduser()
    where = f"CSV file {csv_file}"
    columns, rows = _read_table(csv_file)
    image_dir = Path(image_dir).expanduser() if image_dir is not None else csv_file.parent
    if classnames_file is None and (csv_file.parent / CLASSNAMES_FILE).is_file():
        classnames_file = csv_file.parent / CLASSNAMES_FILE

    def cells(column: str) -> list[tuple[int, str]]:
        values = [(line, row[columns[column]].strip()) for line, row in rows]
        for line, value in values:
            if not value:
                raise VLPromptError(f"{where}, line {line}: empty {column!r}")
        return values

    given = cells("classname") if "classname" in columns else None
    classnames, labels = _classnames(cells("label"), given, Path(classnames_file) if classnames_file else None, where)
    splits_of = [(line, value.lower()) for line, value in cells("split")] if "split" in columns else None
    splits: dict[str, list[Item]] = {}
    for number, ((line, path), label) in enumerate(zip(cells("path"), labels)):
        split = DEFAULT_SPLIT if splits_of is None else splits_of[number][1]
        if split not in SPLIT_NAMES:
            raise VLPromptError(f"{where}, line {line}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
        splits.setdefault(split, []).append(Item(image_dir / path, label, classnames[label]))
    ordered = {split: splits[split] for split in SPLIT_NAMES if split in splits}
    if verify:
        verify_images([item for items in ordered.values() for item in items], str(csv_file))
    return ClassificationDataset(name or csv_file.stem, image_dir, classnames, template, ordered, source=str(csv_file))
