"""`fbench reconstruct`: any method on images, folders and videos (fbench/reconstruct.py)."""

from __future__ import annotations

from pathlib import Path

import click

from fbench.cli.options import CONTEXT, flame_option, load_flame_announced, user_errors
from fbench.cli.plugins import method_reconstructor
from fbench.registry import PluginError, registry


@click.command("reconstruct", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--method", "method_name", required=True, help="A method plugin (`fbench list` shows them).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The method's checkpoint (default: its catalogued one, see `fbench assets`).")
@click.option("--method-option", "method_options", multiple=True, metavar="KEY=VALUE",
              help="A setting of the method's config (methods built without a checkpoint), repeatable.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reconstructions"),
              show_default=True, help="Output folder: OUT/<input>/params.npz and the files asked for.")
@click.option("--all-faces", is_flag=True, help="Every face found (up to --max-faces), not only the largest.")
@click.option("--max-faces", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--mesh", type=click.Choice(["obj", "ply"]), default=None, help="Also write FLAME meshes.")
@click.option("--render", is_flag=True, help="Also write SMIRK's grey shading over the input (PNG; MP4 for videos).")
@click.option("--landmarks", is_flag=True, help="Also write landmark overlays.")
@click.option("--generator", is_flag=True,
              help="Also write the method's image generator's reconstruction of each face (PNG; MP4 for videos), "
                   "made as SMIRK's demo makes it (render, masked crop, generator).")
@click.option("--smooth", type=click.Choice(["one-euro", "savgol"]), default=None,
              help="Videos: smooth the parameters over time (see fbench/reconstruct.py for the parameters).")
@click.option("--one-euro-min-cutoff", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Hz; lower is smoother at rest.")
@click.option("--one-euro-beta", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Speed coefficient; higher lags less in fast motion.")
@click.option("--savgol-window", type=click.IntRange(min=3), default=9, show_default=True, help="Frames (odd).")
@click.option("--savgol-order", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Decode/detect/crop threads.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Skip inputs whose outputs exist.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@flame_option
@user_errors(ValueError)
def reconstruct(inputs: tuple[Path, ...], method_name: str, checkpoint: Path | None, method_options: tuple[str, ...],
                out: Path, all_faces: bool, max_faces: int, mesh: str | None, render: bool, landmarks: bool, generator: bool,
                smooth: str | None, one_euro_min_cutoff: float, one_euro_beta: float, savgol_window: int,
                savgol_order: int, batch_size: int, workers: int, device: str, resume: bool, progress: bool,
                flame: Path | None) -> None:
    """Reconstruct FLAME parameters from images, folders of images and videos.

    Faces are found with MediaPipe and cut the way the method asks (its crop spec); an image
    or frame without a face is logged in OUT/failures.jsonl and the run goes on.

    \b
    Examples:
      fbench reconstruct photo.jpg --method smirk --checkpoint SMIRK_em1.pt --mesh obj --render
      fbench reconstruct photos/ clip.mp4 --method smirk --out recon/ --smooth one-euro
      fbench reconstruct photo.jpg --method smirk --checkpoint SMIRK_em1.pt --generator
    """
    from fbench.reconstruct import ReconstructOptions, check_generator, run_reconstruct

    try:
        method = registry("methods").get(method_name)
    except PluginError as exc:
        raise click.ClickException(str(exc)) from exc
    model = method_reconstructor(method, checkpoint, method_options)
    if generator:
        check_generator(model)
    needs_flame = mesh is not None or render or landmarks or generator
    options = ReconstructOptions(
        all_faces=all_faces, max_faces=max_faces, batch_size=batch_size, device=device, workers=workers, mesh=mesh,
        render=render, landmarks=landmarks, generator=generator, flame=load_flame_announced(flame, n_exp=model.n_exp) if needs_flame else None,
        smooth=smooth, one_euro_min_cutoff=one_euro_min_cutoff, one_euro_beta=one_euro_beta,
        savgol_window=savgol_window, savgol_order=savgol_order, resume=resume, progress=progress)
    summary = run_reconstruct(model, inputs, out, options)
    click.echo(f"{summary.inputs} input(s): {summary.done} reconstructed ({summary.faces} faces), "
               f"{summary.skipped} already done, {summary.failures} failure(s)"
               + (f" (see {out / 'failures.jsonl'})" if summary.failures else "") + f"; outputs in {out}")
    if summary.done and not summary.faces and summary.failures:
        raise click.ClickException("no face was reconstructed: every image or frame failed (see failures.jsonl)")
