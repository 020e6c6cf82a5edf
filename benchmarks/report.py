"""Results JSON -> the README's results table (Markdown) and a PNG chart.

    python -m benchmarks.report                      # the newest file in benchmarks/results/
    python -m benchmarks.report --quick              # the newest smoke run
    python -m benchmarks.report A.json B.json        # several runs (say, CPU and GPU) in one table
    python -m benchmarks.report A.json --markdown table.md --png chart.png

Speed-ups divide a row's images/s by the ``baseline`` row of the same stage
in the same results file (the prototype's, except for the input-size stage,
whose baseline is 224 x 224), so they always compare two measurements of one
run on one machine. Without ``--markdown``/``--png`` the
table and chart are written beside the (first) results file, as
``NAME.md`` and ``NAME.png``; the table is also printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.machine import short_machine
from benchmarks.results import STAGES, load_results, newest_results

#: (stage, what the SDK row must contain, target, aim): the issue's targets.
SPEED_TARGETS = (
    ("end-to-end", "default", 3.0, 6.0, "end to end, default CPU configuration vs the prototype loop"),
    ("preprocess", "uint8 (1 thread", 8.0, None, "preprocessing on one thread at the model's input size (uint8)"),
    ("preprocess 224x224", "uint8 (1 thread", 8.0, None, "preprocessing on one thread at 224x224 (uint8), the "
                                                         "issue's definition"),
)


@dataclass(frozen=True)
class Row:
    """One results record, with its speed-up and where it ran."""

    record: dict
    speedup: float | None
    machine: str
    run: int  # index of the results file this row comes from

    def __getattr__(self, field: str):  # row.stage, row.images_per_s, ...: the record's fields
        if field == "record":  # not set yet (copying): no recursion
            raise AttributeError(field)
        try:
            return self.record[field]
        except KeyError:
            raise AttributeError(field) from None


def rows_of(document: dict, run: int = 0) -> list[Row]:
    """The rows of one results file, in stage order, with speed-ups against
    that file's baseline of the same stage."""
    machine = short_machine(document.get("machine", {}))
    records = document.get("results", [])
    baselines = {r["stage"]: r["images_per_s"] for r in records if r.get("baseline")}
    ordered = sorted(records, key=lambda r: (STAGES.index(r["stage"]), not r.get("baseline")))
    return [Row(record={"baseline": False, "latency_ms": {}, **r},
                speedup=r["images_per_s"] / baselines[r["stage"]] if r["stage"] in baselines else None,
                machine=machine, run=run) for r in ordered]


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _speedup(row: Row) -> str:
    if row.baseline:
        return "1.0x (baseline)"
    return f"**{row.speedup:.1f}x**" if row.speedup is not None else "n/a (no baseline in this run)"


def _latency(row: Row) -> str:
    # Per call: meaningful for inference, where a round is one batch.
    if row.stage != "inference" or not row.latency_ms:
        return "—"
    return f"{row.latency_ms['p50']:.2f} / {row.latency_ms['p99']:.2f}"


def markdown_table(rows: Sequence[Row], with_machine: bool = True) -> str:
    header = ["stage", "what", "backend", "precision", "batch", "threads", "images/s",
              "latency p50 / p99 (ms)", "speed-up vs baseline"]
    if with_machine:
        header.append("machine")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row.stage, row.name, row.backend, row.precision, "—" if row.batch is None else str(row.batch),
                 "—" if row.threads is None else str(row.threads), _number(row.images_per_s), _latency(row),
                 _speedup(row)]
        if with_machine:
            cells.append(f"{row.machine} [{row.run + 1}]")
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def target_lines(rows: Sequence[Row]) -> list[str]:
    """One line per target of the issue, with the ratio this run shows."""
    lines = []
    for stage, marker, target, aim, what in SPEED_TARGETS:
        found = [r for r in rows if r.stage == stage and marker in r.name and r.speedup is not None]
        for row in found:
            verdict = "meets" if row.speedup >= target else "MISSES"
            aim_text = f", aiming at {aim:g}x" if aim else ""
            lines.append(f"- {what}: **{row.speedup:.1f}x** ({verdict} the target of {target:g}x{aim_text}) "
                         f"[{row.run + 1}]")
    return lines


def render_markdown(documents: Sequence[tuple[Path, dict]]) -> str:
    rows = [row for index, (_, document) in enumerate(documents) for row in rows_of(document, index)]
    parts = [markdown_table(rows), ""]
    targets = target_lines(rows)
    if targets:
        parts += ["Targets (ratios within one run):", *targets, ""]
    for index, (path, document) in enumerate(documents):
        machine = document.get("machine", {})
        libraries = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
        git = machine.get("git", {})
        commit = (git.get("commit") or "unknown")[:12] + (" (modified)" if git.get("dirty") else "")
        load = machine.get("load_average")
        parts.append(f"[{index + 1}] `{path.name}`, {document.get('mode')} run, {machine.get('date')}, commit {commit}")
        parts.append(f"- machine: {short_machine(machine)}; CPUs used: {machine.get('affinity')}"
                     f"{f'; load average {load}' if load else ''}; {machine.get('os')}; Python {machine.get('python')}")
        parts.append(f"- libraries: {libraries}")
        parts.append(f"- command: `{document.get('command')}`")
        workload = document.get("workload", {})
        for key in ("end_to_end", "preprocess"):
            if key in workload:
                parts.append(f"- {key.replace('_', ' ')} images: {workload[key].get('note')}")
        if "model" in workload:
            model = workload["model"]
            parts.append(f"- prototype weights: {model.get('prototype_weights')} (largest logit difference vs the "
                         f"SDK's FP32 model: {model.get('max_abs_logit_difference_vs_sdk_fp32', float('nan')):.2g})")
        agreements = [f"{r['name']}: {100 * r['extra']['label_agreement_with_prototype']:.1f}%"
                      for r in document.get("results", [])
                      if (r.get("extra") or {}).get("label_agreement_with_prototype") is not None]
        if agreements:
            parts.append(f"- labels equal to the prototype's (end to end, same images): {'; '.join(agreements)}")
        for note in document.get("notes", []):
            parts.append(f"- note: {note}")
        start_load = workload.get("load_average_at_start")
        cores = machine.get("cores_used") or 1
        if start_load and start_load[0] > 0.5 * cores:
            parts.append(f"- **the machine was busy** before the run began (1-minute load average {start_load[0]} "
                         f"on {cores} CPUs): other work competes for the cores, and thread pools that spin "
                         "(PyTorch's OpenMP above all) slow down far more than the others; ratios are unreliable")
        if document.get("mode") == "quick":
            parts.append("- **smoke run** (few images and rounds): checks the suite, not a measurement to publish")
    return "\n".join(parts) + "\n"


def render_chart(documents: Sequence[tuple[Path, dict]], path: Path) -> Path:
    """A horizontal bar chart of images/s per stage (log scale), with speed-ups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for index, (_, document) in enumerate(documents) for row in rows_of(document, index)]
    stages = [stage for stage in STAGES if any(r.stage == stage for r in rows)]
    if not stages:
        raise ValueError("no results to chart")
    heights = [sum(r.stage == stage for r in rows) for stage in stages]
    figure, axes = plt.subplots(len(stages), 1, figsize=(11, 1.2 + 0.34 * sum(heights) + 0.6 * len(stages)),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    several = len(documents) > 1
    for axis, stage in zip(axes[:, 0], stages):
        stage_rows = [r for r in rows if r.stage == stage]
        labels = []
        for r in stage_rows:
            batch = f", batch {r.batch}" if r.batch and stage == "inference" else ""
            labels.append(f"{r.name} [{r.precision}{batch}]" + (f" [{r.run + 1}]" if several else ""))
        values = [r.images_per_s for r in stage_rows]
        colors = ["#9e9e9e" if r.baseline else "#1f77b4" for r in stage_rows]
        positions = range(len(stage_rows))
        axis.barh(positions, values, color=colors)
        axis.set_yticks(list(positions), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.set_title(stage, fontsize=10, loc="left")
        axis.set_xlabel("images/s (log scale)", fontsize=8)
        for y, r in zip(positions, stage_rows):
            text = "baseline" if r.baseline else (f"{r.speedup:.1f}x" if r.speedup else "")
            axis.text(r.images_per_s, y, f"  {_number(r.images_per_s)}/s {text}", va="center", fontsize=7)
        axis.set_xlim(min(values) / 3, max(values) * 8)  # log bars start at the left edge: give them length
    machines = "; ".join(f"[{i + 1}] {short_machine(d.get('machine', {}))}" for i, (_, d) in enumerate(documents))
    figure.suptitle(f"wbc-edge vs the prototype ({machines})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", type=Path, help="results JSON files (default: the newest)")
    parser.add_argument("--quick", action="store_true", help="default to the newest smoke run instead")
    parser.add_argument("--markdown", type=Path, help="write the table here (default: beside the results)")
    parser.add_argument("--png", type=Path, help="write the chart here (default: beside the results)")
    parser.add_argument("--no-png", action="store_true", help="no chart (needs no matplotlib)")
    args = parser.parse_args(argv)

    paths = list(args.results)
    if not paths:
        newest = newest_results(quick=args.quick)
        if newest is None:
            parser.error("no results yet: run  python -m pytest benchmarks/ --benchmark-only  first")
        paths = [newest]
    try:
        documents = [(path, load_results(path)) for path in paths]
    except ValueError as error:
        parser.error(str(error))
    text = render_markdown(documents)
    markdown = args.markdown or paths[0].with_suffix(".md")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(text)
    sys.stdout.write(text)
    print(f"\ntable: {markdown}")
    if not args.no_png:
        print(f"chart: {render_chart(documents, args.png or paths[0].with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
