"""Train a ResNet-18 (from scratch) on cell images.

The data is a folder per class (DATA/<label>/<image>) or a manifest CSV with
columns path,label[,split]; with a split column, 'train' rows train and 'val'
rows choose the best epoch ('test' rows are never read). Images go through the
exact inference preprocessing, then training-only augmentation (flips, 90-degree
rotations, small rotations and zoom, colour/stain jitter).

Writes to --out: last.pt (every epoch, atomically; --resume continues from it),
best.pt (best validation balanced accuracy, with the fitted temperature),
history.json and summary.json.

examples:
  wbc-edge train --data pbc --manifest pbc/manifest.csv --out runs/r18 --epochs 40
  wbc-edge train --data pbc --manifest pbc/manifest.csv --out runs/r18 --resume   # continue from last.pt
  wbc-edge train --data pbc --manifest pbc/manifest.csv --extra-data lisc lisc/manifest.csv \\
      --ignore-label mixed --out runs/two-labs
"""

from __future__ import annotations

import argparse

from ..errors import require

TORCH_INSTALL = "pip install 'wbc-edge[train]'  (PyTorch CPU: torch==2.13.0)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder per class, or the root of a manifest's relative paths")
    parser.add_argument("--manifest", help="CSV with path,label[,split]")
    parser.add_argument("--out", required=True, help="output folder for checkpoints and history")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=64, help="images per optimizer step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, warmup then cosine)")
    parser.add_argument("--weight-decay", type=float, default=5e-5, help="AdamW weight decay")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing (0: none)")
    parser.add_argument("--balance", choices=["none", "weights", "sampling"], default="weights",
                        help="class balancing: loss weights, balanced sampling, or none")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=(128, 128),
                        help="the model's input height and width in pixels")
    parser.add_argument("--resize-policy", choices=["stretch", "center_crop", "cell_center"], default="cell_center",
                        help="how an image becomes the input: the whole image, its centred square, or a field "
                             "around the white cell found by its nucleus stain (default: %(default)s)")
    parser.add_argument("--augment", choices=["cross-lab", "legacy"], default="cross-lab",
                        help="augmentation: for other labs (stain, geometry, optics; training/augment.py) or the "
                             "first shipped model's milder one (default: %(default)s)")
    parser.add_argument("--norm", choices=["batch", "group"], default="batch",
                        help="ResNet normalization layers: BatchNorm or GroupNorm (default: %(default)s)")
    parser.add_argument("--input-normalization", choices=["dataset", "per_image"], default="per_image",
                        help="normalize the input by the training set's channel statistics or by each image's "
                             "own (default: %(default)s)")
    parser.add_argument("--extra-data", nargs=2, action="append", default=[], metavar=("DATA", "MANIFEST"),
                        help="another labelled source trained on with the first (repeatable); a manifest with a "
                             "'group' column and no 'split' is split by group")
    parser.add_argument("--ignore-label", action="append", default=[], metavar="LABEL",
                        help="leave rows with this label out (repeatable), e.g. LISC's 'mixed'")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="stratified validation share when the data has no 'val' split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the split and the augmentation")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import os

    from ..errors import WbcEdgeError

    if not args.out or (os.path.lexists(args.out) and not os.path.isdir(args.out)):
        raise WbcEdgeError(f"--out {args.out!r}: must be a folder (new, or an earlier run's), not a file")
    require("torch", "PyTorch", TORCH_INSTALL)
    from wbc_edge.training.augment import AugmentConfig
    from wbc_edge.training.train import TrainConfig, train

    train(TrainConfig(
        data=args.data, manifest=args.manifest, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, balance=args.balance,
        input_size=tuple(args.input_size), resize_policy=args.resize_policy, val_fraction=args.val_fraction,
        norm=args.norm, input_normalization=args.input_normalization,
        augment=AugmentConfig.legacy() if args.augment == "legacy" else AugmentConfig(),
        extra_data=[tuple(pair) for pair in args.extra_data], ignore_labels=tuple(args.ignore_label),
        seed=args.seed, device=args.device, resume=args.resume, progress=not args.no_progress,
    ))
    return 0
