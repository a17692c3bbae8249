"""The `fbench` command line: the only package that imports click.

- `main.py`: the `fbench` group and the core commands (list, assets, flame, render, synth, demo);
- `options.py`: options and error handling every command shares (FLAME, configs, dataset roots);
- `prep.py`, `fit.py`: the builders pipelines use for `fbench prep <dataset>` and
  `fbench fit-flame <dataset>`;
- `plugins.py`: the plugin groups, and the `fbench train <method>` / `fbench eval <benchmark>`
  commands built from method and benchmark plugins;
- `shards.py`: `fbench shards inspect|merge-manifests`.
"""

from fbench.cli.main import main

__all__ = ["main"]
