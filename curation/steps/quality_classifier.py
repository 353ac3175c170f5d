"""GPT-3's quality classifier: the steps that train it and filter with it (`curation.quality` runs them).

Features are hashed word n-grams, the model a logistic regression; held-out documents give accuracy
and AUC. Every scored document gets `quality_score` and stays when `pareto(alpha) > 1 - score`
(GPT-3: alpha = 9), with a generator seeded by (seed, document id), so reruns and any task split agree.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from scipy.special import expit

from curation.steps.readers import StageReader
from data_contract.atomic_files import sha256_file, write_atomic
from data_contract.layout import DataLayout
from data_contract.manifest import MANIFEST, write_manifest

MODEL_FILE = "classifier.npz"  # plain arrays (np.load without pickle): a data file cannot run code


def paragraphs(text: str, min_chars: int) -> Iterator[str]:
    """Consecutive lines joined until at least `min_chars`: training examples from any layout."""
    chunk: list[str] = []
    size = 0
    for line in text.splitlines():
        if line.strip():
            chunk.append(line)
            size += len(line) + 1
        if size >= min_chars:
            yield "\n".join(chunk)
            chunk, size = [], 0


def _doc_key(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


def is_heldout(doc_id: str, fraction: float) -> bool:
    """Held-out split by document (never by paragraph: halves of one document would leak)."""
    return (_doc_key(doc_id) % 10_000) < fraction * 10_000


def keep_by_pareto(score: float, alpha: float, seed: int, doc_id: str) -> bool:
    """GPT-3's rule: keep when pareto(alpha) > 1 - score, one seeded draw per document."""
    return bool(np.random.default_rng([seed, _doc_key(doc_id)]).pareto(alpha) > 1.0 - score)


def hashed_ngrams(n_features: int, ngram_range: list[int]) -> Any:
    """The classifier's features: word n-gram counts hashed into `n_features` columns (no vocabulary to store)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=n_features, ngram_range=tuple(ngram_range), alternate_sign=False)


class TrainQualityClassifier(PipelineStep):
    """One-task stage: trains, evaluates and saves the classifier with its manifest."""

    type = "🧠 - MODEL"
    name = "quality classifier (train)"

    def __init__(self, positive_folders: list[str], negative_folders: list[str], output_dir: str, params: dict):
        super().__init__()
        self.positive_folders, self.negative_folders = positive_folders, negative_folders
        self.output_dir, self.params = output_dir, params

    def _examples(self, folders: list[str], rng: random.Random) -> tuple[list[str], list[bool], list[float]]:
        """Up to max_examples_per_class paragraphs, an equal share from each folder (source).

        Weights give every folder the same total weight, so a small source (e.g. news text)
        counts as much as a large one (e.g. an encyclopedia) in what "positive" means.
        """
        share = self.params["max_examples_per_class"] // max(len(folders), 1)
        texts: list[str] = []
        heldout: list[bool] = []
        weights: list[float] = []
        for folder in folders:
            found = [(para, is_heldout(doc.id, self.params["heldout_fraction"]))
                     for doc in StageReader(folder).run()
                     for para in paragraphs(doc.text, self.params["min_paragraph_chars"])]
            if not found:  # a source with no paragraph long enough: it teaches nothing
                continue
            rng.shuffle(found)
            texts += [p for p, _ in found[:share]]
            heldout += [h for _, h in found[:share]]
            weights += [1.0 / len(found[:share]) / len(folders)] * len(found[:share])
        return texts, heldout, weights

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, roc_auc_score
        from sklearn.pipeline import make_pipeline

        rng = random.Random(self.params["seed"])
        pos, pos_held, pos_weights = self._examples(self.positive_folders, rng)
        neg, neg_held, neg_weights = self._examples(self.negative_folders, rng)
        if not pos or not neg:
            raise RuntimeError(f"quality classifier: {len(pos)} positive and {len(neg)} negative paragraphs; "
                               "both sides need text (check the positive and scored sources' outputs)")
        texts = np.array(pos + neg, dtype=object)
        labels = np.array([1] * len(pos) + [0] * len(neg))
        held = np.array(pos_held + neg_held)
        weights = np.array(pos_weights + neg_weights) * len(texts) / 2  # each class weighs half
        if held.all() or not held.any() or len(set(labels[held])) < 2:
            held = np.arange(len(texts)) % 5 == 0  # too few documents to split by document: fall back to paragraphs
        model = make_pipeline(hashed_ngrams(self.params["n_features"], self.params["ngram_range"]),
                              LogisticRegression(C=self.params["C"], max_iter=1000))
        with self.track_time(unit="model"):
            model.fit(texts[~held], labels[~held], logisticregression__sample_weight=weights[~held])
        scores = model.predict_proba(texts[held])[:, 1]
        metrics = {
            "heldout_accuracy": float(accuracy_score(labels[held], scores > 0.5)),
            # what always answering the held-out set's commoner class scores: the bar accuracy must clear
            "heldout_majority_baseline": float(max(labels[held].mean(), 1 - labels[held].mean())),
            "heldout_auc": float(roc_auc_score(labels[held], scores)),
            "train_examples": {"positive": int(labels[~held].sum()), "negative": int((labels[~held] == 0).sum())},
            "heldout_examples": {"positive": int(labels[held].sum()), "negative": int((labels[held] == 0).sum())},
        }
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        regression = model.named_steps["logisticregression"]
        assert list(regression.classes_) == [0, 1]
        arrays = io.BytesIO()
        np.savez(arrays, coef=regression.coef_[0], intercept=regression.intercept_,
                 n_features=self.params["n_features"], ngram_range=np.array(self.params["ngram_range"]))
        write_atomic(out / MODEL_FILE, arrays.getvalue())
        for key in ("heldout_accuracy", "heldout_auc"):
            self.stat_update(key, value=metrics[key], unit="model")
        write_manifest(out, inputs={"positives": self.positive_folders, "negatives": self.negative_folders},
                       config=self.params, counts=metrics, outputs={MODEL_FILE: sha256_file(out / MODEL_FILE)})


class QualityFilter(BaseFilter):
    """Scores documents with the saved classifier and samples them with GPT-3's Pareto rule."""

    name = "🧠 quality classifier (GPT-3)"

    def __init__(self, model_path: str, alpha: float, seed: int, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer, batch_size=64)
        self.model_path, self.alpha, self.seed = model_path, alpha, seed
        self._model: tuple[Any, np.ndarray, float] | None = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        if self._model is None:
            with np.load(self.model_path, allow_pickle=False) as saved:
                self._model = (hashed_ngrams(int(saved["n_features"]), saved["ngram_range"].tolist()),
                               saved["coef"], float(saved["intercept"][0]))
        features, coef, intercept = self._model
        scores = expit(features.transform([doc.text for doc in batch]) @ coef + intercept)  # P(positive)
        results: list[bool | tuple[bool, str]] = []
        for doc, score in zip(batch, scores, strict=False):
            doc.metadata["quality_score"] = round(float(score), 6)
            results.append(keep_by_pareto(float(score), self.alpha, self.seed, doc.id) or (False, "quality_sample"))
        return results


def classifier_metrics(layout: DataLayout) -> dict | None:
    manifest = layout.classifier / MANIFEST
    return json.loads(manifest.read_text())["counts"] if manifest.is_file() else None
