"""What curation kept and removed, and why: stats.json and manifest.json per source, report/curation.md, funnel.png.

    python -m curation.report [overrides]      # after the other stages; also the last stage of curation.run

Numbers come from the per-task stats datatrove saves for every stage; each step's line is
`in = out + removed` for documents and `in = out + removed + edited` for characters.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import hydra
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from omegaconf import DictConfig, OmegaConf

from curation.data_root_claim import claim
from curation.executors import layout_of
from curation.sources import Source, selected_sources
from curation.steps.accounting import (
    EDITED_CHARS,
    ERRORS,
    IN_CHARS,
    IN_DOCS,
    OUT_CHARS,
    OUT_DOCS,
    REMOVED_CHARS,
    REMOVED_DOCS,
    task_stats,
)
from curation.steps.priority_dedup import rank_blocks, source_of_rank
from curation.steps.quality_classifier import classifier_metrics
from data_contract.atomic_files import sha256_file, write_atomic, write_json
from data_contract.layout import DataLayout
from data_contract.manifest import MANIFEST, write_manifest

STATS = "stats.json"


def step_record(stage: str, step: str, stats: dict[str, float]) -> dict[str, Any]:
    removed = {label[len(REMOVED_DOCS):]: {"docs": int(n), "chars": int(stats.get(REMOVED_CHARS + label[len(REMOVED_DOCS):], 0))}
               for label, n in stats.items() if label.startswith(REMOVED_DOCS)}
    return {
        "stage": stage, "step": step,
        "docs_in": int(stats.get(IN_DOCS, 0)), "docs_out": int(stats.get(OUT_DOCS, 0)),
        "chars_in": int(stats.get(IN_CHARS, 0)), "chars_out": int(stats.get(OUT_CHARS, 0)),
        "chars_edited": int(stats.get(EDITED_CHARS, 0)),
        "removed": dict(sorted(removed.items(), key=lambda kv: -kv[1]["docs"])),
        "errors": {label[len(ERRORS):]: int(n) for label, n in stats.items() if label.startswith(ERRORS)},
    }


def source_steps(source: Source, sources: list[Source], layout: DataLayout) -> list[dict[str, Any]]:
    """The funnel of one source: read, its own steps, dedup, quality; as the tasks counted it."""
    records = []
    filtered = task_stats(layout.logs("filter", source.name))
    for step in ("read", *source.steps):
        records.append(step_record("filter", step, filtered.get(step, {})))
    blocks = rank_blocks(sources)
    ranks = {r for r in range(sum(t for _, t in blocks)) if source_of_rank(blocks, r)[0] == source.name}
    for stage, step in (("dedup_pass_one", "exact_dedup"), ("minhash_filter", "minhash")):
        stats = task_stats(layout.logs(stage), ranks)
        if step in stats:
            records.append(step_record("dedup", step, stats[step]))
    quality = task_stats(layout.logs("curate", source.name))
    if "quality" in quality:
        records.append(step_record("quality", "quality", quality["quality"]))
    return records


def removed_examples(folder: Path, count: int, chars: int) -> list[dict[str, str]]:
    examples: list[dict[str, str]] = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            for line in f:
                doc = json.loads(line)
                meta = doc.get("metadata", {})
                examples.append({"id": str(doc.get("id")), "url": meta.get("url", ""),
                                 "reason": meta.get("filter_reason", folder.name),
                                 "text": " ".join(doc.get("text", "").split())[:chars]})
                if len(examples) >= count:
                    return examples
    return examples


def plot_funnel(funnels: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Documents and characters kept after each step, one row per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(funnels), 2, figsize=(13, 2.2 + 1.6 * max(len(s) for s in funnels.values()) * len(funnels) / 2),
                             squeeze=False)
    for row, (name, steps) in enumerate(funnels.items()):
        labels = [s["step"] for s in steps]
        for col, (key, unit) in enumerate((("docs_out", "documents"), ("chars_out", "characters"))):
            ax = axes[row][col]
            values = [s[key] for s in steps]
            bars = ax.barh(labels, values, color="#4c72b0" if col == 0 else "#55a868")
            ax.invert_yaxis()
            ax.set_title(f"{name}: {unit} kept after each step", fontsize=10)
            start = steps[0][key] or 1
            for bar, value in zip(bars, values, strict=False):
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,} ({value / start:.0%})",
                        va="center", fontsize=8)
            # log-like scale: a crawl's HTML characters dwarf what extraction keeps, which must stay readable
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(0, max([*values, 1]) * 30)
            ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def totals_table(funnels: dict[str, list[dict[str, Any]]], tokens: dict[str, int | None]) -> list[str]:
    """Documents, characters and tokens kept per source and overall (tokens once the token files exist)."""
    def row(name: str, docs: int, chars: int, count: int | None) -> str:
        return f"| {name} | {docs:,} | {chars:,} | {'-' if count is None else f'{count:,}'} |"

    kept = {name: (steps[-1]["docs_out"], steps[-1]["chars_out"]) for name, steps in funnels.items()}
    counts = [tokens.get(name) for name in kept]
    lines = ["| source | documents | characters | tokens |", "|---|---:|---:|---:|"]
    lines += [row(name, docs, chars, tokens.get(name)) for name, (docs, chars) in kept.items()]
    overall = None if None in counts else sum(c for c in counts if c is not None)
    lines.append(row("**all**", sum(d for d, _ in kept.values()), sum(c for _, c in kept.values()), overall))
    return lines


def classifier_line(metrics: dict) -> str:
    accuracy, baseline = metrics["heldout_accuracy"], metrics.get("heldout_majority_baseline")
    verdict = ""
    if baseline is not None:
        beats = "above" if accuracy > baseline else "NOT above"
        verdict = f", {beats} the majority-class baseline {baseline:.3f}"
    return (f"Held-out accuracy {accuracy:.3f}{verdict}; AUC {metrics['heldout_auc']:.3f} "
            f"(train {metrics['train_examples']}, held out {metrics['heldout_examples']} paragraphs).")


def markdown(funnels: dict[str, list[dict[str, Any]]], examples: dict[str, dict[str, list]], clusters: dict[str, float],
             metrics: dict | None, tokens: dict[str, int | None]) -> str:
    lines = ["# Curation report", "", "## Kept", "", *totals_table(funnels, tokens), "", "![funnel](funnel.png)", ""]
    for name, steps in funnels.items():
        lines += [f"## {name}", "", "| step | docs in | docs out | kept | chars in | chars out | chars edited | top removal reasons |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for s in steps:
            kept = s["docs_out"] / s["docs_in"] if s["docs_in"] else 1.0
            reasons = ", ".join(f"{r} ({v['docs']})" for r, v in list(s["removed"].items())[:4]) or "-"
            lines.append(f"| {s['step']} | {s['docs_in']:,} | {s['docs_out']:,} | {kept:.0%} | {s['chars_in']:,} | "
                         f"{s['chars_out']:,} | {s['chars_edited']:,} | {reasons} |")
        errors = {k: v for s in steps for k, v in s["errors"].items()}
        if errors:
            lines += ["", "Input errors (file-level, reading went on with the next file): "
                      + ", ".join(f"{k} ({v})" for k, v in errors.items())]
        for step, docs in examples[name].items():
            if docs:
                lines += ["", f"Removed by `{step}` (first {len(docs)}):", ""]
                lines += [f"- `{d['reason']}` {d['url'] or d['id']}: {d['text']!r}" for d in docs]
        lines.append("")
    lines += ["## Deduplication", "", f"MinHash clusters: {int(clusters.get('clusters', 0)):,}, "
              f"documents removed as near-duplicates: {int(clusters.get('to_remove', 0)):,}", ""]
    pairs = {k: v for k, v in clusters.items() if k.startswith("removed_from/")}
    if pairs:
        lines += ["| removed from | kept in | documents |", "|---|---|---:|"]
        lines += [f"| {k.split('/')[1]} | {k.split('/')[3]} | {int(v):,} |" for k, v in sorted(pairs.items())]
        lines.append("")
    lines += ["## Quality classifier", ""]
    if metrics:
        lines += [classifier_line(metrics), ""]
    else:
        lines += ["Not trained in this run.", ""]
    return "\n".join(lines)


def log_to_wandb(cfg: DictConfig, funnels: dict[str, list[dict[str, Any]]], png: Path, metrics: dict | None) -> None:
    import wandb

    columns = ["source", "stage", "step", "docs_in", "docs_out", "chars_in", "chars_out", "chars_edited"]
    rows = [[name] + [s[c] for c in columns[1:]] for name, steps in funnels.items() for s in steps]
    run = wandb.init(project=cfg.report.wandb.project, mode=cfg.report.wandb.mode, job_type="curation",
                     config=OmegaConf.to_container(cfg, resolve=True))
    run.log({"curation/funnel": wandb.Table(columns=columns, data=rows), "curation/funnel_png": wandb.Image(str(png)),
             **({f"curation/quality_{k}": v for k, v in metrics.items() if isinstance(v, float)} if metrics else {})})
    run.finish()


def _source_tokens(layout: DataLayout, source: str) -> int | None:
    manifest = layout.tokens(source) / MANIFEST
    return json.loads(manifest.read_text())["tokens"] if manifest.is_file() else None


def write_report(cfg: DictConfig, sources: list[Source], layout: DataLayout) -> Path:
    """stats.json + manifest.json per source, report/curation.md + funnel.png; returns the report path."""
    funnels = {s.name: source_steps(s, sources, layout) for s in sources}
    examples: dict[str, dict[str, list]] = {}
    for source in sources:
        curated = layout.curated(source.name)
        curated.mkdir(parents=True, exist_ok=True)
        steps = funnels[source.name]
        kept = {"docs": steps[-1]["docs_out"], "chars": steps[-1]["chars_out"]}
        write_json(curated / STATS, {"source": source.name, "kept": kept, "steps": steps})
        config = {"source": OmegaConf.to_container(cfg.sources[source.name], resolve=True),
                  **{k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("filters", "dedup", "quality")}}
        inputs = [{"path": p, "sha256": sha256_file(p)} for p in source.files if Path(p).is_file()]
        write_manifest(curated, inputs=inputs, config=config, counts=kept,
                       outputs={p.name: sha256_file(p) for p in sorted(curated.glob("*.jsonl.gz"))})
        removed = layout.removed(source.name)
        examples[source.name] = {
            step["step"]: removed_examples(removed / step["step"], cfg.report.examples_per_filter, cfg.report.example_chars)
            for step in steps if step["step"] != "read"
        }
        if removed.is_dir():
            write_manifest(removed, inputs=[str(layout.work(source.name, "filtered"))], config=config,
                           counts={s["step"]: sum(v["docs"] for v in s["removed"].values()) for s in steps},
                           outputs={str(p.relative_to(removed)): sha256_file(p) for p in sorted(removed.rglob("*.jsonl.gz"))})
    clusters = {k: v for step in task_stats(layout.logs("minhash_cluster")).values() for k, v in step.items()}
    metrics = classifier_metrics(layout)
    layout.report.mkdir(parents=True, exist_ok=True)
    png = layout.report / "funnel.png"
    plot_funnel(funnels, png)
    report = layout.report / "curation.md"
    tokens = {s.name: _source_tokens(layout, s.name) for s in sources}
    write_atomic(report, markdown(funnels, examples, clusters, metrics, tokens))
    write_manifest(layout.report, inputs=[str(layout.curated(s.name) / STATS) for s in sources],
                   config=OmegaConf.to_container(cfg.report, resolve=True),
                   counts={name: steps[-1]["docs_out"] for name, steps in funnels.items()},
                   outputs={p.name: sha256_file(p) for p in (png, report)})
    if cfg.report.wandb.enabled:
        log_to_wandb(cfg, funnels, png, metrics)
    return report


class CurationReport(PipelineStep):
    """The report as a one-task stage, so that on Slurm it runs after the stages it reports on."""

    type = "📊 - REPORT"
    name = "curation report"

    def __init__(self, cfg: DictConfig, sources: list[Source], layout: DataLayout):
        super().__init__()
        self.cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.sources, self.layout = sources, layout

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        write_report(OmegaConf.create(self.cfg_yaml), self.sources, self.layout)


@hydra.main(version_base="1.3", config_path="../conf", config_name="curate")
def main(cfg: DictConfig) -> None:
    sources, layout = selected_sources(cfg), layout_of(cfg)
    claim(cfg, sources, layout, with_dedup=False)
    print(f"curation report: {write_report(cfg, sources, layout)}")


if __name__ == "__main__":
    main()
