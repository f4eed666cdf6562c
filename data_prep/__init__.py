"""data_prep: raw datasets in, webdataset shards + ``manifest.json`` out. Imports nothing from ``pipeline``.

Python entry points (the command line, ``python -m data_prep``, wraps the same functions):

- `generate_demo` writes the demo texture dataset in the CUB layout; `generate_imagenet_demo` and
  `generate_ava_demo` write it in the ImageNet and AVA layouts;
- `shard_cub`, `shard_imagenet`, `shard_ava` shard a dataset and return its manifest;
- `verify` checks a finished output folder;
- `load_manifest`, `shard_urls` read a manifest (schema in `data_prep.manifest`).
"""

from data_prep.ava import shard_ava
from data_prep.cub import shard_cub
from data_prep.demo import generate_demo
from data_prep.demo_layouts import generate_ava_demo, generate_imagenet_demo
from data_prep.imagenet import shard_imagenet
from data_prep.manifest import load_manifest, shard_urls
from data_prep.records import DataPrepError
from data_prep.shards import ShardOptions
from data_prep.verify import verify

__all__ = [
    "DataPrepError",
    "ShardOptions",
    "generate_ava_demo",
    "generate_demo",
    "generate_imagenet_demo",
    "load_manifest",
    "shard_ava",
    "shard_cub",
    "shard_imagenet",
    "shard_urls",
    "verify",
]
