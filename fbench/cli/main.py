"""The `fbench` command line. Plugin commands (prep, fit-flame, train, eval) come from the registries."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import numpy as np

from fbench import __version__
from fbench.cli.options import CONTEXT, flame_option, load_flame_announced
from fbench.cli.plugins import PluginGroup, eval_command, train_command
from fbench.cli.reconstruct import reconstruct
from fbench.cli.shards import shards_group
from fbench.registry import PluginError, registry
from fbench.synth import DATASETS as SYNTH_DATASETS

log = logging.getLogger("fbench")


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="fbench")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """fbench: expressive 3D face reconstruction research toolkit.

    \b
    Start here:
      fbench demo                          # end to end on the synthetic default
      fbench assets                        # what is installed, what is missing, where to get it
      fbench list                          # installed pipelines, methods, benchmarks
      fbench flame synth --out flame/      # write the synthetic FLAME-format model
      fbench flame decode --params p.npz --out mesh.obj

    \b
    The researcher's commands (dataset roots: `fbench assets`):
      fbench prep affectnet --out shards/
      fbench fit-flame famos --stride 10
      fbench train smirk
      fbench eval multiface --method smirk
    """
    level = logging.WARNING - 10 * min(verbose + 1, 2)  # INFO by default, DEBUG with -v
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command("list")
def list_plugins() -> None:
    """List the installed plugins (pipelines, methods, benchmarks).

    \b
    Example:
      fbench list
    """
    for kind in ("pipelines", "methods", "benchmarks"):
        reg = registry(kind)
        click.echo(f"{kind} ({reg.spec.group}):")
        if not reg.names():
            click.echo("  (none installed)")
        for name in reg.names():
            try:
                plugin = reg.get(name)
                stage = f" [{', '.join(plugin.stages)}]" if kind == "pipelines" else ""
                click.echo(f"  {name:<14}{stage} {plugin.summary}")
            except PluginError as exc:
                click.echo(f"  {name:<14} BROKEN: {exc}")


@main.group("assets", invoke_without_command=True)
@click.pass_context
def assets_group(ctx: click.Context) -> None:
    """External assets: what fbench can use, where it looks, what is present.

    \b
    Examples:
      fbench assets                    # the whole catalogue
      fbench assets check flame2020    # exit status 1 when missing
    """
    if ctx.invoked_subcommand is not None:
        return
    from fbench.assets import ASSETS, fbench_home

    click.echo(f"FBENCH_HOME = {fbench_home()}")
    for asset in ASSETS:
        missing = asset.missing()
        state = "present" if not missing else "MISSING"
        click.echo(f"\n{asset.name}  [{state}]  {asset.description}")
        click.echo(f"  looks in : {asset.directory()}" + (f"  (override: ${asset.env})" if asset.env else ""))
        for path in asset.paths():
            click.echo(f"    {'ok     ' if path.exists() else 'missing'} {path.name}")
        click.echo(f"  used by  : {asset.used_by}")
        if missing:
            click.echo(f"  obtain   : {asset.source}")
            click.echo(f"  licence  : {asset.licence}")
    from fbench.assets import DATASETS, DatasetRootError, fbench_data, user_config_file

    click.echo(f"\nDatasets (root: --root, else `datasets:` in {user_config_file()}, else "
               f"$FBENCH_DATA/<folder>; FBENCH_DATA = {fbench_data()})")
    for dataset in DATASETS:
        try:
            root, how = dataset.configured()
            state = "present" if root.is_dir() else "MISSING"
        except DatasetRootError as exc:
            root, how, state = "?", str(exc), "BROKEN"
        click.echo(f"  {dataset.name:<10} [{state}]  {root}  ({how})")
        if state != "present":
            click.echo(f"  {'':<10} obtain: {dataset.source}; or `fbench synth {dataset.name} --out DIR` (miniature)")


@assets_group.command("check")
@click.argument("name")
def assets_check(name: str) -> None:
    """Exit with status 1 unless asset NAME is present (names: see `fbench assets`).

    \b
    Example:
      fbench assets check smirk-checkpoint || echo "download it first"
    """
    from fbench.assets import get_asset

    try:
        asset = get_asset(name)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from exc
    missing = asset.missing()
    if missing:
        click.echo(f"{name}: missing {', '.join(str(p) for p in missing)}\n  obtain: {asset.source}", err=True)
        sys.exit(1)
    click.echo(f"{name}: present in {asset.directory()}")


@main.group("flame")
def flame_group() -> None:
    """The FLAME head model: synthetic model, decoding parameters to meshes, model info.

    \b
    Examples:
      fbench flame synth --out flame-synthetic/
      fbench flame info
      fbench flame decode --params p.npz --out mesh.obj
    """


@flame_group.command("synth")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to write the model files into.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; the same seed gives identical files.")
def flame_synth(out: Path, seed: int) -> None:
    """Write the synthetic FLAME-format model (same files and formats as FLAME2020 + SMIRK assets).

    \b
    Example:
      fbench flame synth --out ~/flame-synthetic --seed 0
      fbench flame decode --flame ~/flame-synthetic --params p.npz --out mesh.obj
    """
    from fbench.flame.synthetic import write_synthetic_flame

    path = write_synthetic_flame(out, seed=seed)
    from fbench.flame import load_flame_assets

    assets = load_flame_assets(path)
    click.echo(f"wrote synthetic FLAME (seed {seed}) to {path}: {assets.num_vertices} vertices, "
               f"{assets.faces.shape[0]} faces, {assets.num_shape} shape + {assets.num_expression} expression components")


@flame_group.command("info")
@flame_option
def flame_info(flame: Path | None) -> None:
    """Print the sizes of a FLAME model and the files it was read from.

    \b
    Example:
      fbench flame info --flame /data/FLAME2020
    """
    model = load_flame_announced(flame)
    click.echo(f"vertices {model.num_vertices}, faces {model.faces.shape[0]}, joints {model.num_joints}, "
               f"shape {model.n_shape}, expression {model.n_exp}, landmarks 68 + {model.mp_lmk_vertices.shape[0]} MediaPipe")
    if "masks" not in model.missing:
        click.echo("masks: " + ", ".join(f"{k} ({len(v)})" for k, v in model.masks.items()))
    for key, looked in model.missing.items():
        click.echo(f"  {key:<10} MISSING (looked for {looked}); decoding works, uses of it will say so")
    for key, path in model.assets_files.items():
        click.echo(f"  {key:<10} {path}")


@flame_group.command("decode")
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="An .npz with FlameParams keys (shape, expression, jaw, eyelids, global_pose, neck, eyes, "
                   "optional translation); missing keys are zero.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output mesh (.obj or .ply); a batch writes one file per item with a _000 suffix.")
@flame_option
def flame_decode(params_path: Path, out: Path, flame: Path | None) -> None:
    """Turn FLAME parameters into a mesh.

    \b
    Example:
      python -c "import numpy as np; np.savez('p.npz', jaw=[0.2,0,0], expression=[2.0])"
      fbench flame decode --params p.npz --out mesh.obj
    """
    import torch

    from fbench.flame.params import load_params_npz
    from fbench.geometry import Mesh, write_mesh

    from fbench.geometry.mesh import mesh_format

    model = load_flame_announced(flame)
    try:
        mesh_format(out)
        params = load_params_npz(params_path)
    except (FileNotFoundError, ValueError) as exc:  # MeshError is a ValueError; both name the file
        raise click.ClickException(str(exc)) from exc
    try:
        with torch.no_grad():
            vertices = model(params).vertices.numpy()
    except ValueError as exc:  # e.g. more shape components than the model has
        raise click.ClickException(f"{params_path}: {exc}") from exc
    faces = model.faces.numpy()
    paths = [out] if len(vertices) == 1 else [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(len(vertices))]
    try:
        for path, verts in zip(paths, vertices):
            write_mesh(path, Mesh(vertices=verts, faces=faces, units="m"))
    except OSError as exc:  # a read-only or full output folder (write_mesh leaves no partial file)
        from fbench.faults import describe_os_error

        raise click.ClickException(describe_os_error(exc, out)) from exc
    click.echo(f"wrote {len(paths)} mesh(es): {paths[0]}" + (f" ... {paths[-1]}" if len(paths) > 1 else ""))


@main.command("render")
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="An .npz with FlameParams keys (missing keys zero; cam = SMIRK's scale, tx, ty).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output PNG; a batch writes one PNG per item with a _000 suffix.")
@click.option("--size", type=click.IntRange(16, 4096), default=224, show_default=True, help="Image side in pixels.")
@flame_option
def render(params_path: Path, out: Path, size: int, flame: Path | None) -> None:
    """Render FLAME parameters with SMIRK's renderer (grey, five lights, face region).

    Without a `cam` the face is framed automatically.

    \b
    Example:
      python -c "import numpy as np; np.savez('p.npz', jaw=[0.25,0,0], global_pose=[0,0.4,0])"
      fbench render --params p.npz --out face.png
    """
    from fbench.render import render_params_file

    model = load_flame_announced(flame)
    try:
        paths = render_params_file(params_path, out, flame=model, size=size)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {len(paths)} image(s): {paths[0]}" + (f" ... {paths[-1]}" if len(paths) > 1 else ""))


@main.command("synth")
@click.argument("dataset", type=click.Choice(SYNTH_DATASETS))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Dataset root to write (the layout of the real release).")
@click.option("--n", "n", type=click.IntRange(min=1), default=None,
              help="How many images/videos/subjects (dataset default if omitted).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; the same seed writes the same dataset.")
@click.option("--corrupt", type=click.IntRange(min=0), default=0, show_default=True,
              help="Deliberately corrupt this many files (robustness tests).")
@click.option("--variant", default=None, help="Layout variant of the copy (data_cards/DATASET.yaml), e.g. npy.")
@flame_option
def synth(dataset: str, out: Path, n: int | None, seed: int, corrupt: int, variant: str | None,
          flame: Path | None) -> None:
    """Write a miniature DATASET in its real on-disk layout, with ground truth.

    The ground truth (FLAME parameters, cameras, landmarks behind every item) goes to
    OUT/fbench_ground_truth.h5; the layout is described in data_cards/DATASET.yaml.

    \b
    Examples:
      fbench synth affectnet --out data/AffectNet --n 40 --corrupt 2
      fbench synth famos --out data/FaMoS --n 2
    """
    from fbench.synth import write_synthetic_dataset

    model = load_flame_announced(flame)
    try:
        result = write_synthetic_dataset(dataset, out, n=n, seed=seed, corrupt=corrupt, flame=model, variant=variant)
    except ValueError as exc:  # e.g. --corrupt larger than what the dataset has, an unknown variant
        raise click.BadParameter(str(exc)) from exc
    click.echo(f"synthetic {dataset}: {result.summary()}")


@main.command("demo")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("fbench-demo"),
              show_default=True, help="Directory for the demo's outputs.")
@flame_option
def demo(out: Path, flame: Path | None) -> None:
    """Run fbench end to end on the synthetic default (no licensed data needed).

    Generates (or loads) the FLAME model, decodes a few expressions and poses to meshes and
    renders them with SMIRK's shading; writes a miniature AffectNet in its real layout and
    preps it into shards; writes a miniature FaMoS and fits FLAME to it, exporting SMIRK's
    expression templates. Results on synthetic data are labelled synthetic and are not
    comparable with published numbers.

    \b
    Example:
      fbench demo --out fbench-demo/
    """
    import torch

    from fbench.flame import FlameParams
    from fbench.geometry import Mesh, write_mesh

    model = load_flame_announced(flame)
    out.mkdir(parents=True, exist_ok=True)
    poses = {"neutral": {}, "expression": {"expression": torch.linspace(-2, 2, 10)},
             "jaw_open": {"jaw": torch.tensor([0.25, 0.0, 0.0])}, "eyes_closed": {"eyelids": torch.tensor([1.0, 1.0])},
             "head_turn": {"global_pose": torch.tensor([0.0, 0.5, 0.0]), "neck": torch.tensor([0.1, 0.0, 0.0])}}
    params = FlameParams.cat([FlameParams.from_dict({k: v[None] for k, v in values.items()}, n_exp=10)
                              for values in poses.values()])
    with torch.no_grad():
        output = model(params)
    np.savez(out / "params.npz", **{k: v.numpy() for k, v in params.as_dict().items()})
    for i, name in enumerate(poses):
        write_mesh(out / f"{name}.obj", Mesh(vertices=output.vertices[i].numpy(), faces=model.faces.numpy(), units="m"))
    click.echo(f"[1/6] FLAME forward: {len(poses)} meshes ({model.num_vertices} vertices) -> {out}/*.obj")

    from fbench.render import render_flame, save_png, smirk_renderer_for

    with torch.no_grad():
        images = render_flame(model, params, smirk_renderer_for(model, "face"))["rendered_img"]
    for name, image in zip(poses, images):
        save_png(image, out / f"{name}.png")
    click.echo(f"[2/6] SMIRK render: {len(poses)} images (224x224) -> {out}/*.png")

    # The researcher's commands, as they would type them, on miniature synthetic datasets.
    from fbench.synth import write_synthetic_dataset

    pipelines = registry("pipelines")
    affectnet = write_synthetic_dataset("affectnet", out / "data" / "AffectNet", n=16, corrupt=1, flame=model)
    run = lambda command, *args: command.main([str(a) for a in args], standalone_mode=False)  # noqa: E731
    run(pipelines.get("affectnet").command_for("prep"), "--root", affectnet.root, "--out", out / "shards",
        "--landmarks", "annotations")
    click.echo(f"[3/6] fbench prep affectnet: shards in {out / 'shards' / 'affectnet'} "
               f"(one file corrupted on purpose, logged in rejects.jsonl)")
    famos = write_synthetic_dataset("famos", out / "data" / "FaMoS", n=1, flame=model)
    run(pipelines.get("famos").command_for("fit"), "--root", famos.root, "--out", out / "fits", "--stride", 10,
        "--export-templates", out / "templates", *(["--flame", flame] if flame else []))
    click.echo(f"[4/6] fbench fit-flame famos: fits in {out / 'fits'}, SMIRK templates in {out / 'templates'}")

    # A method through the registry: SMIRK with random weights (no pretrained weights ship with
    # fbench; a trained or released checkpoint goes in its place), then a benchmark with the
    # ground-truth oracle and that SMIRK on a miniature MultiFace.
    methods = registry("methods")
    smirk = methods.get("smirk")
    checkpoint = smirk.save(smirk.build(smirk.config(generator=False)), out / "smirk-untrained.pt")
    run(reconstruct, affectnet.root / "Manually_Annotated_Images", "--method", "smirk", "--checkpoint", checkpoint,
        "--out", out / "reconstructions", "--mesh", "obj", "--render", "--no-progress",
        *(["--flame", flame] if flame else []))
    click.echo(f"[5/6] fbench reconstruct --method smirk: params, meshes and renders in {out / 'reconstructions'} "
               "(untrained SMIRK: random weights, the plumbing only)")
    multiface = write_synthetic_dataset("multiface", out / "data" / "MultiFace", n=2, flame=model)
    benchmarks = registry("benchmarks")
    for method, extra in (("oracle", []), ("smirk", ["--checkpoint", checkpoint])):
        run(eval_command(benchmarks.get("multiface")), "--method", method, *extra, "--root", multiface.root,
            "--out", out / "results" / "multiface" / method, *(["--flame", flame] if flame else []))
    click.echo(f"[6/6] fbench eval multiface --method oracle|smirk: results in {out / 'results'}")
    click.echo(f"demo finished: outputs in {out} (synthetic FLAME: {model.flame_source.synthetic})")


@main.command("report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.md"), show_default=True,
              help="Markdown file; the CSV and LaTeX tables go beside it (.csv, .tex).")
def report(folder: Path, out: Path) -> None:
    """Gather every metrics.json under FOLDER into one table per benchmark (methods as rows,
    published reference rows apart), as Markdown, CSV and LaTeX.

    \b
    Example:
      fbench eval multiface --method smirk && fbench eval multiface --method oracle
      fbench report results/ --out report.md
    """
    from fbench.report import gather_results, write_tables

    tables = gather_results(folder)
    if not tables:
        raise click.ClickException(f"{folder}: no metrics.json of a benchmark run below it")
    paths = write_tables(tables, out)
    click.echo(f"{len(tables)} table(s), {sum(len(t.rows) for t in tables)} result row(s): "
               + ", ".join(str(p) for p in paths.values()))


main.add_command(PluginGroup("prep", registry_kind="pipelines", make=lambda p: p.command_for("prep"), stage="prep",
                             help="Turn a raw dataset into landmark-annotated WebDataset shards.\n\n"
                                  "\b\nExample:\n  fbench prep affectnet --out shards/"))
main.add_command(PluginGroup("fit-flame", registry_kind="pipelines", make=lambda p: p.command_for("fit"), stage="fit",
                             help="Fit FLAME to 3D scans or registrations.\n\n"
                                  "\b\nExample:\n  fbench fit-flame famos --stride 10"))
main.add_command(PluginGroup("train", registry_kind="methods", make=train_command,
                             help="Train a reconstruction method.\n\n\b\nExample:\n  fbench train smirk"))
main.add_command(PluginGroup("eval", registry_kind="benchmarks", make=eval_command,
                             help="Score a method on a benchmark.\n\n"
                                  "\b\nExample:\n  fbench eval multiface --method smirk"))
main.add_command(shards_group)
main.add_command(reconstruct)
