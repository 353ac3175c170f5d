"""Deduplication that keeps the copy from the best source: the building blocks of `curation.dedup`.

Every source gets a contiguous block of task ranks, highest `priority` first; datatrove's exact dedup
keeps the highest-priority copy through `SourcePriority`, and `PriorityMinhashCluster` (MinHash stage 3)
keeps the lowest (rank, document) of each cluster, i.e. the copy from the best source.
"""

from __future__ import annotations

import struct
from collections import Counter

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupCluster
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.text import TextNormConfig, simplify_text

from curation.sources import Source
from curation.steps.readers import StageReader


def normalized_text(doc: Document) -> str:
    """What exact dedup compares: lowercased, punctuation and extra whitespace removed."""
    return simplify_text(doc.text, TextNormConfig())


class SourcePriority:
    """Exact dedup's document priority (1..65535): the source's configured `priority`."""

    def __init__(self, priorities: dict[str, int]):
        self.priorities = priorities

    def __call__(self, doc: Document) -> int:
        return self.priorities[doc.metadata["source"]]


def rank_blocks(sources: list[Source]) -> list[tuple[str, int]]:
    """(source, tasks) in rank order: highest priority first, so lower rank = better copy."""
    ordered = sorted(sources, key=lambda s: (-s.priority, s.name))
    return [(s.name, s.tasks) for s in ordered]


def source_of_rank(blocks: list[tuple[str, int]], rank: int) -> tuple[str, int, int]:
    """(source, rank within the source, tasks of the source) for a global dedup rank."""
    start = 0
    for name, tasks in blocks:
        if rank < start + tasks:
            return name, rank - start, tasks
        start += tasks
    raise ValueError(f"rank {rank} is beyond the {start} dedup tasks")


class RankBlockReader(PipelineStep):
    """Reads, for each global rank, its share of its source's documents under `<root>/<source>/<stage>/`.

    `own_file=True` reads exactly `<rank>.jsonl.gz` as written by an earlier rank-block stage, so
    document indices line up with the signatures computed there.
    """

    type = "📖 - READER"
    name = "rank blocks"

    def __init__(self, root: DataFolderLike, stage: str, blocks: list[tuple[str, int]], own_file: bool = False):
        super().__init__()
        self.root = get_datafolder(root)
        self.stage, self.blocks, self.own_file = stage, blocks, own_file

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        source, local_rank, local_tasks = source_of_rank(self.blocks, rank)
        folder = self.root.resolve_paths(f"{source}/{self.stage}")
        if self.own_file:
            reader, local_rank, local_tasks = StageReader(folder, glob_pattern=f"{rank:05d}.jsonl.gz"), 0, 1
        else:
            reader = StageReader(folder)
        for doc in reader.run(None, local_rank, local_tasks):
            self.stat_update("documents")
            yield doc


class PriorityMinhashCluster(MinhashDedupCluster):
    """MinHash stage 3 keeping, in each cluster, the document with the lowest (rank, index).

    datatrove's stage 3 keeps the root of a union-by-size, which can be any member; with rank
    blocks ordered by source priority the lowest id is the copy from the best source. Writes the
    same `.remove` files datatrove's stage 4 reads, and counts removals per (removed, kept) source.
    """

    name = "🎯 MinHash stage 3 (best source kept)"

    def __init__(self, input_folder: DataFolderLike, output_folder: DataFolderLike, config: MinhashConfig,
                 blocks: list[tuple[str, int]]):
        super().__init__(input_folder, output_folder, config)
        self.blocks = blocks

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def find(node: tuple[int, int]) -> tuple[int, int]:
            root = node
            while parent.get(root, root) != root:
                root = parent[root]
            while node != root:
                parent[node], node = root, parent[node]
            return root

        with self.track_time():
            for dup_file in self.input_folder.list_files(glob_pattern="*.dups"):
                with self.input_folder.open(dup_file, "rb") as f:
                    for f1, d1, f2, d2 in read_tuples_from_file(f, "4I", lines_to_buffer=self.lines_to_buffer):
                        a, b = find((f1, d1)), find((f2, d2))
                        if a != b:
                            parent[max(a, b)] = min(a, b)
                            parent.setdefault(min(a, b), min(a, b))
            sizes: Counter[tuple[int, int]] = Counter()
            with self.output_folder.get_output_file_manager(mode="wb") as output:
                for node in sorted(parent):
                    root = find(node)
                    sizes[root] += 1
                    if node != root:
                        output.write(f"{node[0]:06d}.remove", struct.pack("<I", node[1]))
                        removed_from = source_of_rank(self.blocks, node[0])[0]
                        kept_in = source_of_rank(self.blocks, root[0])[0]
                        self.stat_update("to_remove", f"removed_from/{removed_from}/kept_in/{kept_in}")
            self.stat_update("clusters", value=len(sizes))
            for size in sizes.values():
                self.stat_update("cluster_size", value=size, unit="cluster")
