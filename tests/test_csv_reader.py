"""CSV datasets (``csv:<file.csv>`` and YAML ``format: csv``) on tiny PNGs and CSVs written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vlprompt.cli import main
from vlprompt.data import ImageItems, load_dataset, read_csv_dataset
from vlprompt.data import registry as registry_module
from vlprompt.data.registry import DATASETS, dataset_names, register_dataset_configs
from vlprompt.errors import VLPromptError


def png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)
    return path


def write_csv(path: Path, lines: list[str], bom: bool = False, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode() + newline.encode())
    return path


def triples(items) -> list[tuple[str, int, str]]:
    return [(item.path.name, item.label, item.classname) for item in items]


def test_class_name_labels_with_splits_bom_crlf_quoting(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c, d.png", "e.png"]):
        png(tmp_path / "data" / "images" / name, i)
    outside = png(tmp_path / "elsewhere" / "f.png", 9)
    csv_file = write_csv(
        tmp_path / "data" / "pets.csv",
        [
            "Split, PATH ,label,notes",  # any column order and case; unknown columns are ignored
            "test,images/a.png,zebra,x",
            "train,images/b.png,ant,",
            'train,"images/c, d.png",zebra,"quoted, with comma"',
            "",  # blank lines are skipped
            "val,images/e.png,Bee,y",
            f"test,{outside},ant,absolute path",
        ],
        bom=True,
        newline="\r\n",
    )
    ds = load_dataset(f"csv:{csv_file}", verify=True)
    assert ds.name == "pets" and ds.template == "a photo of a {}." and ds.source == str(csv_file)
    assert ds.classnames == ["Bee", "ant", "zebra"]  # sorted label strings, not order of appearance
    assert list(ds.splits) == ["train", "val", "test"]
    assert triples(ds.split("train")) == [("b.png", 1, "ant"), ("c, d.png", 2, "zebra")]
    assert triples(ds.split("val")) == [("e.png", 0, "Bee")]
    assert triples(ds.split("test")) == [("a.png", 2, "zebra"), ("f.png", 1, "ant")]
    assert ds.split("train")[0].path == tmp_path / "data" / "images" / "b.png" and ds.split("test")[1].path == outside


def test_integer_labels_with_classnames_txt_and_no_split_column(tmp_path):
    png(tmp_path / "x.png")
    png(tmp_path / "y.png", 1)
    (tmp_path / "classnames.txt").write_bytes(b"\xef\xbb\xbfgolden retriever\r\ntabby cat\r\nhouse finch\r\n")  # BOM, CRLF
    csv_file = write_csv(tmp_path / "eval.csv", ["path,label", "y.png,2", "x.png,0"])
    ds = read_csv_dataset(csv_file, verify=True)
    assert ds.classnames == ["golden retriever", "tabby cat", "house finch"]  # every listed class, even unused ones
    assert list(ds.splits) == ["test"]  # no split column: everything is in "test"
    assert triples(ds.split("test")) == [("y.png", 2, "house finch"), ("x.png", 0, "golden retriever")]


def test_classname_column_names_integer_labels_and_ids(tmp_path):
    by_index = write_csv(tmp_path / "a.csv", ["path,label,classname", "1.png,1,tabby cat", "0.png,0,golden retriever"])
    assert read_csv_dataset(by_index).classnames == ["golden retriever", "tabby cat"]
    by_id = write_csv(
        tmp_path / "b.csv",
        ["path,label,classname,split", "1.png,n02123045,tabby cat,train", "0.png,n02099601,golden retriever,test"],
    )
    ds = read_csv_dataset(by_id)
    assert ds.classnames == ["golden retriever", "tabby cat"]  # ordered by sorted label id
    assert triples(ds.split("train")) == [("1.png", 1, "tabby cat")]


@pytest.mark.parametrize(
    "lines, names, message",
    [
        ([], None, r"bad\.csv is empty: expected a header row \(required: path, label; optional: split, classname\)"),
        (["path,label"], None, r"bad\.csv has a header but no rows"),
        (
            ["file,class"],
            None,
            r"bad\.csv: missing column\(s\) 'path', 'label'; found 'file', 'class' \(required: path, label; optional: split",
        ),
        (["path;label", "a.png;cat"], None, r"found 'path;label' .*\(columns must be separated by commas\)"),
        (["path,label,path", "a.png,cat,b.png"], None, r"column 'path' appears twice"),
        (["path,label", "a.png,cat"], "cat\ndog\n", r"line 2: label 'cat' is not an integer; with .*classnames\.txt the labels"),
        (
            ["path,label", "a.png,1", "b.png,3"],
            "cat\ndog\n",
            r"line 3: label 3 is out of range 0\.\.1 \(the names in .*classnames",
        ),
        (["path,label", "a.png,-1"], "cat\n", r"line 2: label -1 is out of range 0\.\.0"),
        (["path,label", "a.png,0"], "cat\ncat\n", r"classnames\.txt lists 'cat' twice"),
        (["path,label,classname", "a.png,1,cat"], "cat\ndog\n", r"line 2: classname 'cat' but label 1 is 'dog'"),
        (
            ["path,label", "a.png,0", "b.png,1"],
            None,
            r"the labels are integers but nothing names the classes: put classnames\.txt",
        ),
        (["path,label", "a.png,0", "b.png,cat"], None, r"mixes integer labels \(line 2: '0'\) and class names \(line 3: 'cat'\)"),
        (["path,label,classname", "a.png,0,cat", "b.png,2,dog"], None, r"labels must be 0\.\.1 without gaps; found 0\.\.2"),
        (["path,label,classname", "a.png,0,cat", "b.png,0,dog"], None, r"line 3: label 0 is 'dog' here but 'cat' on line 2"),
        (
            ["path,label,classname", "a.png,x,cat", "b.png,y,cat"],
            None,
            r"line 3: class 'cat' has label 'y' here but 'x' on line 2",
        ),
        (["path,label,split", "a.png,cat,training"], None, r"line 2: split 'training' is not one of train, val, test"),
        (["path,label,split", "a.png,cat,"], None, r"line 2: empty 'split'"),
        (["path,label", ",cat"], None, r"line 2: empty 'path'"),
        (["path,label", "a.png,cat,extra"], None, r"line 2: 3 cells but the header has 2 columns \(quote values"),
    ],
)
def test_bad_csv_is_one_clear_line(tmp_path, lines, names, message):
    if names is not None:
        (tmp_path / "classnames.txt").write_text(names)
    csv_file = write_csv(tmp_path / "bad.csv", lines) if lines else (tmp_path / "bad.csv")
    if not lines:
        csv_file.write_bytes(b"\xef\xbb\xbf")  # a BOM and nothing else is empty too
    with pytest.raises(VLPromptError, match=message) as error:
        read_csv_dataset(csv_file)
    assert "\n" not in str(error.value)


def test_missing_file_and_empty_prefix(tmp_path):
    with pytest.raises(VLPromptError, match=r"CSV file not found: .*nowhere\.csv"):
        load_dataset(f"csv:{tmp_path / 'nowhere.csv'}")
    with pytest.raises(VLPromptError, match=r"dataset name 'csv:' has no path after 'csv:': write csv:<path>"):
        load_dataset("csv:")
    with pytest.raises(VLPromptError, match=r"unknown dataset 'cvs'.*csv:<path>, .*folder:<path>"):
        load_dataset("cvs", tmp_path)


def test_verify_names_missing_image_and_corrupt_image_fails_on_load(tmp_path):
    png(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    csv_file = write_csv(tmp_path / "list.csv", ["path,label", "broken.png,cat", "ok.png,dog", "gone.png,dog"])
    ds = read_csv_dataset(csv_file)  # not verified: loads
    with pytest.raises(VLPromptError, match=r"image not found: .*gone\.png \(listed in .*list\.csv\)$"):
        read_csv_dataset(csv_file, verify=True)
    items = ImageItems(ds.split("test"), lambda image: torch.zeros(1), source=ds.source)
    with pytest.raises(VLPromptError, match=r"cannot decode image .*broken\.png \(listed in .*list\.csv\)"):
        items[0]
    assert items[1][1:] == (1, 1)


@pytest.fixture()
def scratch_registry(monkeypatch):
    """Registrations made by a test are undone afterwards."""
    dataset_names()
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))
    monkeypatch.setattr(registry_module, "_CONFIGS", dict(registry_module._CONFIGS))


def test_yaml_format_csv(tmp_path, scratch_registry):
    configs = tmp_path / "configs"
    configs.mkdir()
    config = {
        "name": "tmp_csv_ds",
        "format": "csv",
        "template": "a photo of a {}, a kind of bird.",
        "dataset_dir": "birds",
        "image_dir": "imgs",
        "split_file": "meta/list.csv",
        "classnames_file": "meta/names.txt",
    }
    (configs / "tmp_csv_ds.yaml").write_text(yaml.safe_dump(config))
    assert register_dataset_configs(configs) == ["tmp_csv_ds"]
    folder = tmp_path / "data" / "birds"
    png(folder / "imgs" / "a.png")
    write_csv(folder / "meta" / "list.csv", ["path,label,split", "a.png,1,train"])
    (folder / "meta" / "names.txt").write_text("finch\nrobin\n")
    ds = load_dataset("tmp_csv_ds", tmp_path / "data", verify=True)
    assert ds.classnames == ["finch", "robin"] and ds.template.endswith("kind of bird.")
    assert [(item.path, item.label) for item in ds.split("train")] == [(folder / "imgs" / "a.png", 1)]


def test_datasets_check_csv_needs_no_root(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VLPROMPT_DATA", raising=False)
    png(tmp_path / "a.png")
    png(tmp_path / "b.png", 1)
    csv_file = write_csv(tmp_path / "mine.csv", ["path,label,split", "a.png,cat,train", "b.png,dog,test"])
    assert main(["datasets", "check", f"csv:{csv_file}", "--decode"]) == 0
    assert f"csv:{csv_file}: OK, 2 classes, train 1, test 1" in capsys.readouterr().out
    (tmp_path / "b.png").write_bytes(b"\x00garbage")
    write_csv(csv_file, ["path,label,split", "a.png,cat,train", "b.png,dog,test", "c.png,dog,test"])
    assert main(["datasets", "check", f"csv:{csv_file}", "--decode"]) == 2
    out = capsys.readouterr().out
    assert "1 of 3 listed images are missing, e.g." in out and "c.png" in out
    assert "1 images cannot be decoded: cannot decode image" in out
    assert main(["datasets", "list"]) == 0
    assert "csv:<path>" in capsys.readouterr().out
