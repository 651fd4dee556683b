"""Datasets: readers (CoOp split files, FGVC lists, image folders, CSV files), a name registry, image decoding."""

from vlprompt.data.classification import ClassificationDataset, ImageItems, Item, read_coop_split
from vlprompt.data.csv_reader import read_csv_dataset
from vlprompt.data.folder import read_image_folder
from vlprompt.data.images import load_image
from vlprompt.data.registry import DATASETS, dataset_names, load_dataset, register_dataset_configs

__all__ = [
    "DATASETS",
    "ClassificationDataset",
    "ImageItems",
    "Item",
    "dataset_names",
    "load_dataset",
    "load_image",
    "read_coop_split",
    "read_csv_dataset",
    "read_image_folder",
    "register_dataset_configs",
]
