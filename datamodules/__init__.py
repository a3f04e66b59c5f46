"""LightningDataModules yielding fusegen's dict batches.

Batch contract: ``{"image": Tensor, "audio": Tensor, "text": {"input_ids", "attention_mask"},
"label": LongTensor[B], "present": {modality: BoolTensor[B]}}`` -- modalities a dataset does not
have are simply absent from the dict; a modality missing for *some* samples is marked False in
``present`` (and blanked), never silently zero-filled.
"""

from datamodules.base import collate
from datamodules.cache import CacheRepairWarning
from datamodules.download import DataUnavailable
from datamodules.paths import cache_dir, default_data_root, resolve_data_root
from datamodules.sources import ensure_datasets
from datamodules.synthetic import SyntheticMultimodalDataModule

__all__ = ["CacheRepairWarning", "DataUnavailable", "SyntheticMultimodalDataModule", "cache_dir", "collate",
           "default_data_root", "ensure_datasets", "resolve_data_root"]

from datamodules.avmnist import AVMNISTDataModule  # noqa: E402
from datamodules.fsdd import FSDDDataModule  # noqa: E402
from datamodules.hf import HFDataModule  # noqa: E402
from datamodules.mnist import MNISTDataModule  # noqa: E402
from datamodules.sst2 import SST2DataModule  # noqa: E402
from datamodules.trimodal import TriModalDigitsDataModule  # noqa: E402

__all__ += ["AVMNISTDataModule", "FSDDDataModule", "HFDataModule", "MNISTDataModule",
            "SST2DataModule", "TriModalDigitsDataModule"]
