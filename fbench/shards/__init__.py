"""WebDataset shards: the dataset source protocol, the prep runner, manifests, and training readers.

- `source`: `DatasetSource` / `SourceItem` / `MediaSource`, what `pipelines/<dataset>.py` implements
- `media`: image and video readers; `keys`: `safe_key`, `safe_relpath`
- `prep`: `PrepConfig`, `run_prep` (sources -> landmarks -> crops -> shards, resumable, parts);
  `plan`: items -> units (one unit = one shard); `worker`: a unit -> a shard; `writer`: tar files
- `manifest`: manifest.json / rejects.jsonl, merging part manifests
- `reader`: iterate shard samples; `stream`: webdataset pipelines for training and evaluation
  (splitting over readers, resampling, shuffling, fixed-composition mixing, a per-sample
  transform supplied by the method)
"""

from fbench.shards.keys import UnsafePathError, resolve_in_root, safe_key, safe_relpath
from fbench.shards.media import InputError, iter_video_frames, probe_video_frames, read_image
from fbench.shards.source import DatasetSource, MediaSource, SourceItem, SourceOptions, select_items, walk_files

__all__ = ["UnsafePathError", "resolve_in_root", "safe_key", "safe_relpath", "InputError", "iter_video_frames",
           "probe_video_frames", "read_image", "DatasetSource", "MediaSource", "SourceItem", "SourceOptions",
           "select_items", "walk_files"]
