"""The ablation behind MODEL_CARD.md: short training runs that add one lever
at a time, each scored per lab on images it did not train on.

    python -m wbc_edge.training.ablation --pbc ../shared/data/pbc --lisc ../shared/data/lisc \\
        --out runs/ablation --size 64 --epochs 5

Every variant trains on PBC's train split (the last one also on LISC's train
groups) and is scored on PBC's test split, on LISC (all of it where the
variant never saw LISC, its test groups where it did), and for the domain
guard, by OOD AUROC of several scores with PBC test as in-distribution and
LISC as the shifted lab.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..datasets import load_images, read_samples
from ..metrics import auroc, classification_report, softmax
from .augment import AugmentConfig
from .checkpoint import load_checkpoint
from .deployable import Normalize
from .domain_guard import fit_guard, stage_features
from .resnet import resnet18
from .train import TrainConfig, net_logits, train

ABLATION_ARMS = {
    "legacy": dict(resize_policy="stretch", augment=AugmentConfig.legacy(), input_normalization="dataset"),
    "+stain/geometry/optics augmentation": dict(resize_policy="stretch", input_normalization="dataset"),
    "+cell centring": dict(resize_policy="cell_center", input_normalization="dataset"),
    "+per-image normalization": dict(resize_policy="cell_center", input_normalization="per_image"),
    "+LISC train groups": dict(resize_policy="cell_center", input_normalization="per_image", second_source=True),
    "+GroupNorm (no LISC)": dict(resize_policy="cell_center", input_normalization="per_image", norm="group"),
}

GUARD_STAGES = {"stage 4": (4,), "stages 3+4": (3, 4), "stages 1-4": (1, 2, 3, 4)}


def _scores(state, cfg: TrainConfig, train_set, sets: dict) -> dict:
    meta = state["meta"]
    net = resnet18(num_classes=len(meta["classes"]), norm=cfg.norm)
    net.load_state_dict(state["model"])
    net.eval()
    normalize = Normalize(meta["mean"], meta["std"], cfg.input_normalization)
    result = {}
    logits = {k: net_logits(net, s.images, meta["mean"], meta["std"], input_normalization=cfg.input_normalization)
              for k, s in sets.items()}
    for name, s in sets.items():
        report = classification_report(s.labels, softmax(logits[name], meta.get("temperature", 1.0)), s.classes)
        result[name] = {"balanced_accuracy": report["balanced_accuracy"], "ece": report["ece"], "n": len(s)}
    in_name, out_name = "pbc_test", "lisc"
    z_in, z_out = logits[in_name], logits[out_name]
    def msp(z):
        return -softmax(z).max(1)
    def energy(z):
        return -torch.logsumexp(torch.from_numpy(z), 1).numpy()
    ood = {"max softmax": auroc(msp(z_in), msp(z_out)), "energy": auroc(energy(z_in), energy(z_out))}
    for label, stages in GUARD_STAGES.items():
        feats = stage_features(net, normalize, train_set.images, stages)
        stats = fit_guard(feats, train_set.labels, len(meta["classes"]), stages)
        f_in = stats.score(stage_features(net, normalize, sets[in_name].images, stages))
        f_out = stats.score(stage_features(net, normalize, sets[out_name].images, stages))
        ood[f"mahalanobis {label}"] = auroc(f_in, f_out)
    result["ood_auroc_pbc_vs_lisc"] = ood
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pbc", required=True)
    parser.add_argument("--lisc", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "ablation.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    pbc_manifest, lisc_manifest = Path(args.pbc) / "manifest.csv", Path(args.lisc) / "manifest.csv"
    for name, options in ABLATION_ARMS.items():
        if (args.only and name not in args.only) or name in results:
            continue
        options = dict(options)
        second = options.pop("second_source", False)
        cfg = TrainConfig(data=args.pbc, manifest=str(pbc_manifest), out=str(out / name.strip("+").replace(" ", "_").replace("/", "-")),
                          epochs=args.epochs, input_size=(args.size, args.size), progress=False,
                          extra_data=[(args.lisc, str(lisc_manifest))] if second else [],
                          ignore_labels=("mixed",), **options)
        print(f"== {name}", flush=True)
        train(cfg)
        state = load_checkpoint(Path(cfg.out) / "best.pt")
        classes = state["meta"]["classes"]
        size = cfg.input_size
        pbc = read_samples(args.pbc, pbc_manifest)
        lisc = [s for s in read_samples(args.lisc, lisc_manifest) if s.label != "mixed"]
        lisc_eval = [s for s in lisc if s.split == "test"] if second else lisc
        train_samples = [s for s in pbc if s.split == "train"] + ([s for s in lisc if s.split == "train"] if second else [])
        sets = {"pbc_test": load_images([s for s in pbc if s.split == "test"], classes, size, cfg.resize_policy, progress=False),
                "lisc": load_images(lisc_eval, classes, size, cfg.resize_policy, progress=False)}
        train_set = load_images(train_samples, classes, size, cfg.resize_policy, progress=False)
        result = _scores(state, cfg, train_set, sets)
        result["lisc_seen"] = second
        results[name] = result
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
