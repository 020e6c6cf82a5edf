"""The release: one command from a trained checkpoint to every shipped model variant.

    python -m wbc_edge.calibration.release --checkpoint runs/r18-128/best.pt \\
        --data ../shared/data/pbc --manifest ../shared/data/pbc/manifest.csv

1. Export the FP32 ONNX with lossless float16 weight storage, verified against
   PyTorch (``wbc-edge export --weight-storage fp16``), and measure what the
   rounding to float16 values changes (checkpoint in PyTorch vs the ONNX, test split).
2. Draw one stratified calibration set from the training split.
3. INT8 for each target: try the calibration recipes the field tries (method,
   first convolution and classifier kept in float, more images) and keep, on
   the *validation* split, the fastest one that meets the targets (all layers
   in INT8 before layers kept in float), then the one closest to FP32 (the
   smallest mean |delta probability|). The test split only reports, it never
   chooses. Every attempt is recorded.
4. FP16 with AutoCast.
5. Measure every variant against FP32 on the test split (``compare``) and
   ship the variants that fit the package budget (50 MB), in this order:
   fp32, int8-cpu, int8-tensorrt, fp16. The others stay in the build folder,
   and the report names the command that makes each.

Writes ``wbc_edge/models/default.<variant>.onnx`` with ``.json`` sidecars and
``.calibration.json`` records, and ``BUILD/release-report.json`` plus a
Markdown table (``BUILD/release-table.md``) for the README. Exits 1 if a
variant misses its target on the test split (the files are written all the same).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from wbc_edge.metadata import sidecar_path

from .calibrate import record_path_for
from .compare import PARITY_TARGETS

#: Shipping order: what the package needs most comes first.
SHIP_ORDER = ("fp32", "int8-cpu", "int8-tensorrt", "fp16")
BUDGET_BYTES = 50_000_000
NAME = "default"


@dataclass(frozen=True)
class Recipe:
    method: str
    keep_float: tuple[str, ...] = ()
    num_images: int | None = None  # None: the release's --num-images

    def describe(self) -> str:
        text = self.method
        if self.keep_float:
            text += " + " + ", ".join(self.keep_float) + " in float"
        if self.num_images:
            text += f", {self.num_images} images"
        return text


#: INT8 recipes per target, in order of preference (all-INT8, the fastest, first).
RECIPES = {
    "int8-cpu": [
        Recipe("percentile"),
        Recipe("max"),
        Recipe("percentile", ("first-conv", "classifier")),
        Recipe("max", ("first-conv", "classifier")),
        Recipe("percentile", (), 2048),
    ],
    "int8-tensorrt": [
        Recipe("max"),
        Recipe("entropy"),
        Recipe("max", ("first-conv", "classifier")),
        Recipe("entropy", ("first-conv", "classifier")),
        Recipe("entropy", (), 2048),
    ],
}


def default_models_dir() -> Path:
    import wbc_edge.models

    return Path(wbc_edge.models.__file__).resolve().parent


def artifact_files(onnx_path: Path) -> list[Path]:
    """A model and what lies beside it: sidecar and calibration record."""
    return [p for p in (onnx_path, sidecar_path(onnx_path), record_path_for(onnx_path)) if p.exists()]


def move_artifact(onnx_path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in artifact_files(onnx_path):
        shutil.copy2(path, folder / path.name)
    return folder / onnx_path.name


def remove_artifact(onnx_path: Path) -> None:
    for path in artifact_files(onnx_path):
        path.unlink()


def _short(report: dict) -> dict:
    keys = ("num_images", "top1_agreement", "num_disagreements", "a", "b", "accuracy_change",
            "balanced_accuracy_change", "recall_change", "max_abs_prob_diff", "mean_abs_prob_diff",
            "disagreements")
    return {k: report[k] for k in keys}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| variant | shipped | top-1 agreement vs FP32 | accuracy | balanced accuracy | max abs. delta prob | size |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        r = row["test"]
        lines.append(
            f"| {row['variant']} | {'yes' if row['shipped'] else 'no (command below)'} | "
            f"{r['top1_agreement']:.2%} ({r['num_disagreements']} of {r['num_images']} differ) | "
            f"{r['b']['accuracy']:.4f} | {r['b']['balanced_accuracy']:.4f} | {r['max_abs_prob_diff']:.4f} | "
            f"{row['size_bytes'] / 1e6:.1f} MB |")
    return "\n".join(lines)


def release(checkpoint: str, data: str, manifest: str, models_dir: Path, build_dir: Path, num_images: int = 512,
            budget_bytes: int = BUDGET_BYTES, verify_images: str | None = None, progress: bool = True) -> dict:
    from wbc_edge.backends import load_runner
    from wbc_edge.export.onnx_export import export_checkpoint

    from .calibrate import calibrate
    from .compare import check_targets, load_labelled_images, parity_report, relative_paths, run_logits
    from .dataset import DEFAULT_SEED, load_calibration_set

    started = time.time()
    build_dir.mkdir(parents=True, exist_ok=True)
    staging = build_dir / "models"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    paths = {v: staging / f"{NAME}.{v}.onnx" for v in SHIP_ORDER}
    report: dict = {"checkpoint": str(checkpoint), "data": str(data), "manifest": str(manifest), "variants": {}}

    def say(text: str) -> None:
        print(f"[release {time.time() - started:6.0f} s] {text}", flush=True)

    # 1. FP32, lossless float16 storage.
    exported = export_checkpoint(checkpoint, paths["fp32"], weight_storage="fp16", verify_images=verify_images)
    meta = exported.metadata
    say(f"exported {paths['fp32'].name}: {exported.size_bytes / 1e6:.1f} MB; {exported.parity.describe()}")
    report["export"] = exported.summary()

    val = load_labelled_images(data, manifest, "val", meta, progress)
    test = load_labelled_images(data, manifest, "test", meta, progress)

    def logits_of(path: Path, images) -> tuple:
        with load_runner(path) as runner:
            return run_logits(runner, images.images, progress=progress, desc=path.name), runner.metadata.temperature

    reference = {name: logits_of(paths["fp32"], images) for name, images in (("val", val), ("test", test))}

    def versus_fp32(path: Path, split: str) -> dict:
        images = val if split == "val" else test
        ref_logits, ref_t = reference[split]
        logits, temperature = logits_of(path, images)
        return parity_report(ref_logits, logits, images.labels, images.classes, ref_t, temperature,
                             relative_paths(images.paths, data))

    # What rounding the weights to float16 values did: the checkpoint (PyTorch) vs the FP32 ONNX.
    with load_runner(checkpoint) as torch_runner:
        ckpt_logits = run_logits(torch_runner, test.images, progress=progress, desc="checkpoint")
        rounding = parity_report(ckpt_logits, reference["test"][0], test.labels, test.classes,
                                 torch_runner.metadata.temperature, reference["test"][1],
                                 relative_paths(test.paths, data))
    report["fp16_weight_rounding_test"] = _short(rounding)
    say(f"float16 weight rounding on the test split: agreement {rounding['top1_agreement']:.2%}, accuracy "
        f"{rounding['a']['accuracy']:.4f} -> {rounding['b']['accuracy']:.4f}, balanced "
        f"{rounding['a']['balanced_accuracy']:.4f} -> {rounding['b']['balanced_accuracy']:.4f}")

    # 2. One calibration set for every variant (larger recipes draw their own).
    calib = load_calibration_set(data, manifest, meta, num_images, DEFAULT_SEED, progress)
    say(f"calibration set: {len(calib)} training images {calib.class_counts()}")

    # 3. INT8: every recipe; on the validation split, keep one that meets the
    #    targets, the fastest such (a layer kept in float runs slower on both
    #    runtimes: docs/measurements.md), then the closest to FP32 by mean
    #    |delta probability| (top-1 agreement alone hardly separates recipes). The test split of each attempt is
    #    recorded for the report, never used to choose.
    for variant, recipes in RECIPES.items():
        target = variant.split("-", 1)[1]
        attempts = []
        for i, recipe in enumerate(recipes):
            candidate = build_dir / "attempts" / f"{variant}-{i}" / paths[variant].name
            candidate.parent.mkdir(parents=True, exist_ok=True)
            n = recipe.num_images or num_images
            calibrate(paths["fp32"], candidate, precision="int8", data=data, manifest=manifest, target=target,
                      method=recipe.method, keep_float=recipe.keep_float, num_images=n, seed=DEFAULT_SEED,
                      calibration_set=None if recipe.num_images else calib, progress=progress)
            on_val, on_test = versus_fp32(candidate, "val"), versus_fp32(candidate, "test")
            missed = check_targets(on_val, PARITY_TARGETS["int8"]["min_agreement"],
                                   PARITY_TARGETS["int8"]["max_balanced_accuracy_drop"])
            attempts.append({"recipe": recipe.describe(), "path": str(candidate), "val": _short(on_val),
                             "missed_on_val": missed, "test_report_only": _short(on_test)})
            say(f"{variant} [{recipe.describe()}]: val agreement {on_val['top1_agreement']:.2%}, balanced accuracy "
                f"change {on_val['balanced_accuracy_change'] * 100:+.2f} pt"
                + (f" (missed: {'; '.join(missed)})" if missed else "")
                + f"; test (report only) {on_test['top1_agreement']:.2%}, "
                f"{on_test['balanced_accuracy_change'] * 100:+.2f} pt")
        chosen = max(range(len(attempts)), key=lambda j: (not attempts[j]["missed_on_val"],
                                                          -len(recipes[j].keep_float),
                                                          -attempts[j]["val"]["mean_abs_prob_diff"], -j))
        say(f"{variant}: chosen on val: {attempts[chosen]['recipe']}"
            + (" (it misses the targets on val)" if attempts[chosen]["missed_on_val"] else ""))
        for path in artifact_files(Path(attempts[chosen]["path"])):
            shutil.copy2(path, staging / path.name)
        report["variants"][variant] = {"attempts": attempts, "chosen": attempts[chosen]["recipe"]}

    # 4. FP16.
    calibrate(paths["fp32"], paths["fp16"], precision="fp16", data=data, manifest=manifest,
              num_images=num_images, seed=DEFAULT_SEED, calibration_set=calib, progress=progress)
    report["variants"]["fp16"] = {}
    report["variants"]["fp32"] = {}

    # 5. Test-split parity, budget, shipping.
    rows, used = [], 0
    shipped_dir_paths = {}
    for variant in SHIP_ORDER:
        path = paths[variant]
        size = sum(p.stat().st_size for p in artifact_files(path))
        on_test = (versus_fp32(path, "test") if variant != "fp32"
                   else parity_report(reference["test"][0], reference["test"][0], test.labels, test.classes,
                                      reference["test"][1], reference["test"][1]))
        precision = variant.split("-")[0]
        missed = [] if variant == "fp32" else check_targets(on_test, PARITY_TARGETS[precision]["min_agreement"],
                                                              PARITY_TARGETS[precision]["max_balanced_accuracy_drop"])
        ship = used + size <= budget_bytes
        if ship:
            used += size
        entry = report["variants"][variant]
        entry.update({"size_bytes": path.stat().st_size, "files_bytes": size, "shipped": ship,
                      "test": _short(on_test), "missed_on_test": missed})
        if not ship:
            entry["make_with"] = _make_command(variant, path, models_dir, data, manifest, num_images, entry)
        rows.append({"variant": variant, "shipped": ship, "test": on_test, "size_bytes": path.stat().st_size})
        shipped_dir_paths[variant] = ship
        say(f"{variant}: {path.stat().st_size / 1e6:.1f} MB, test agreement {on_test['top1_agreement']:.2%}, "
            f"accuracy {on_test['b']['accuracy']:.4f}, balanced {on_test['b']['balanced_accuracy']:.4f}"
            + (f"; MISSED: {'; '.join(missed)}" if missed else "") + ("" if ship else "; over budget: not shipped"))

    # Replace the shipped set: stale variants from an earlier release must not stay behind.
    models_dir.mkdir(parents=True, exist_ok=True)
    for variant in SHIP_ORDER:
        remove_artifact(models_dir / paths[variant].name)
        if shipped_dir_paths[variant]:
            move_artifact(paths[variant], models_dir)
    report["shipped_bytes"] = used
    report["budget_bytes"] = budget_bytes
    report["table"] = markdown_table(rows)
    report["seconds"] = round(time.time() - started)
    from wbc_edge.atomic import write_atomic

    write_atomic(build_dir / "release-report.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(build_dir / "release-table.md", report["table"] + "\n")
    say(f"shipped {used / 1e6:.1f} MB of {budget_bytes / 1e6:.0f} MB in {models_dir}; report: "
        f"{build_dir / 'release-report.json'}\n\n{report['table']}")
    return report


def _make_command(variant: str, path: Path, models_dir: Path, data, manifest, num_images, entry) -> str:
    """The one command that makes a variant left out of the package."""
    from .calibrate import repeat_command

    meta = json.loads(sidecar_path(path).read_text())
    q = meta.get("quantization") or {}
    precision = variant.split("-")[0]
    target = variant.split("-", 1)[1] if precision == "int8" else "tensorrt"
    return repeat_command(models_dir / f"{NAME}.fp32.onnx", models_dir / path.name, precision, data, manifest,
                          target, q.get("method"), q.get("num_images", num_images), q.get("seed", 0),
                          q.get("keep_float", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wbc_edge.calibration.release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="root of the manifest's relative paths")
    parser.add_argument("--manifest", required=True, help="CSV with path,label,split,sha256 (train/val/test)")
    parser.add_argument("--models-dir", type=Path, default=default_models_dir(), help="where shipped models go")
    parser.add_argument("--build-dir", type=Path, default=Path("build/release"),
                        help="attempts, variants left out, and the report")
    parser.add_argument("--num-images", type=int, default=512, help="calibration images")
    parser.add_argument("--budget-mb", type=float, default=BUDGET_BYTES / 1e6, help="package budget for models")
    parser.add_argument("--verify-images", help="images to verify the export on (default: examples/)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from wbc_edge.errors import WbcEdgeError

    try:
        report = release(args.checkpoint, args.data, args.manifest, args.models_dir, args.build_dir,
                         args.num_images, int(args.budget_mb * 1e6), args.verify_images, not args.no_progress)
    except WbcEdgeError as error:
        print(f"release: error: {error}", file=sys.stderr)
        return 2
    missed = {v: e["missed_on_test"] for v, e in report["variants"].items() if e.get("missed_on_test")}
    if missed:
        print(f"release: targets missed on the test split: {missed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
