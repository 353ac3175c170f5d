"""Task sets built from the real sample corpus, for fine-tuning and zero-shot evaluation.

`build(raw, out, wiki_articles, seed)` (the command: `python -m train.build_task_sets`, train/build_task_sets.py)
writes `OUT/<task>/{train,validation}.jsonl` in the shapes `conf/task/*.yaml` read:

  reuters            classification  Reuters-21578 newswire (Debian r-cran-tm): `acq` (acquisitions)
                                     vs `crude` (oil) articles, text = the article body.
  reuters_headlines  instruction     "Write a headline for this news article." -> the article's real
                                     headline, input = its body.
  next_sentence      multiple choice context = up to 3 consecutive sentences of a Wikipedia lead, the
                                     answer = the sentence that really follows, 3 distractors =
                                     sentences drawn from other held-out articles of the same split.
  wiki_continuation  entailment      premise = up to 2 consecutive sentences, hypothesis = the true next
                                     sentence (`continues`) or one from another article (`unrelated`),
                                     half each.
  wiki_relatedness   similarity      two sentences scored 1.0 (same article), 0.5 (different articles
                                     of the same Wikipedia topic, e.g. Geography) or 0.0 (different
                                     topics), a third each where the split allows.

and `OUT/zero_shot/wiki_next_sentence.jsonl`: every next-sentence item of both splits, for
`python -m train.evaluate` and `eval.tasks=[...]` during pretraining.

Held out: the Wikipedia articles are the `wiki_articles` English extracts with the smallest
xxh64 of their title. `curation.tokenize` holds out the documents with the smallest xxh64 of their
id (the title, for Wikipedia) as the validation slice, `token_files.val_docs` (50) per source, so with
the default these articles never enter pretraining: after curation drops some documents, the
smallest 50 survivors still include every survivor of this set. Articles, not sentences, are split
between train and validation (every fifth in hash order is validation), and distractors and partners
come from the same split, so no validation sentence is seen in fine-tuning. The Reuters articles are
not in the pretraining mixture at all; every fifth file in name order is validation.
"""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import xxhash

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
HEADLINE_INSTRUCTION = "Write a headline for this news article."
VALIDATION_EVERY = 5
CONTEXT_SENTENCES = 3
DISTRACTORS = 3
NO_SHARED_TOPIC = "Uncategorized"


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per line, UTF-8 kept as is (the sets are read by people too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def reuters_articles(raw: Path) -> list[dict[str, str]]:
    """Every article under RAW/reuters/<topic>/, with its topic from the folder, in name order."""
    folder = raw / "reuters"
    if not (folder / ".complete").is_file():
        raise SystemExit(f"build_task_sets: no Reuters articles in {folder}; fetch them with "
                         f"`python -m curation.sample_data {raw}`")
    articles = []
    for path in sorted(folder.glob("*/*.xml")):
        root = ET.parse(path).getroot()
        body = re.sub(r"\s+", " ", root.findtext("TEXT/BODY") or "").strip()
        body = re.sub(r"\s*Reuter$", "", body)
        title = re.sub(r"\s+", " ", root.findtext("TEXT/TITLE") or "").strip()
        if body and title:
            articles.append({"id": f"{path.parent.name}/{path.stem}", "label": path.parent.name,
                             "title": title, "text": body})
    return articles


def heldout_wikipedia(raw: Path, count: int) -> list[dict[str, Any]]:
    """The `count` English extracts with the smallest xxh64(title), split into sentences."""
    path = raw / "wiki" / "extracts" / "summaries_en-us.json"
    if not path.is_file():
        raise SystemExit(f"build_task_sets: no {path}; fetch the sample corpus with `python -m curation.sample_data {raw}`")
    extracts = json.loads(path.read_text(encoding="utf-8"))
    titles = sorted(extracts, key=xxhash.xxh64_intdigest)[:count]
    return [{"title": t, "topic": extracts[t].get("topic") or NO_SHARED_TOPIC,
             "sentences": [s.strip() for s in SENTENCE_END.split(extracts[t]["extract"]) if s.strip()]}
            for t in titles]


def next_sentence_items(articles: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """For each sentence after an article's first: the sentences before it, it and distractors from other articles."""
    items = []
    for a, article in enumerate(articles):
        others = [s for b, other in enumerate(articles) if b != a for s in other["sentences"][1:]]
        for i in range(1, len(article["sentences"])):
            choices = rng.sample(others, DISTRACTORS)
            label = rng.randrange(DISTRACTORS + 1)
            choices.insert(label, article["sentences"][i])
            items.append({"context": " ".join(article["sentences"][max(0, i - CONTEXT_SENTENCES):i]),
                          "choices": choices, "label": label, "source": article["title"]})
    return items


def continuation_pairs(articles: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Premise and either its true next sentence or one of another article, half each."""
    pairs = []
    for a, article in enumerate(articles):
        others = [s for b, other in enumerate(articles) if b != a for s in other["sentences"][1:]]
        for i in range(1, len(article["sentences"])):
            follows = rng.random() < 0.5
            pairs.append({"premise": " ".join(article["sentences"][max(0, i - 2):i]),
                          "hypothesis": article["sentences"][i] if follows else rng.choice(others),
                          "label": "continues" if follows else "unrelated", "source": article["title"]})
    return pairs


def relatedness_pairs(articles: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Sentence pairs scored by how close their sources are: same article, same topic, or neither."""
    pairs = []
    for a, article in enumerate(articles):
        same_topic = [s for b, o in enumerate(articles) if b != a and o["topic"] == article["topic"] != NO_SHARED_TOPIC
                      for s in o["sentences"]]
        other_topic = [s for o in articles if o["topic"] != article["topic"] for s in o["sentences"]]
        for i, sentence in enumerate(article["sentences"]):
            rest = article["sentences"][:i] + article["sentences"][i + 1:]
            pools = [(1.0, rest), (0.5, same_topic), (0.0, other_topic)]
            score, pool = pools[(a + i) % 3]
            if not pool:
                score, pool = next((s, p) for s, p in pools if p)
            pairs.append({"sentence1": sentence, "sentence2": rng.choice(pool), "score": score,
                          "source": article["title"]})
    return pairs


def build(raw: Path, out: Path, wiki_articles: int, seed: int) -> dict[str, dict[str, int]]:
    """Write every task set; returns example counts per task and split."""
    counts: dict[str, dict[str, int]] = {}

    def save(task: str, split: str, records: list[dict[str, Any]]) -> None:
        write_jsonl(out / task / f"{split}.jsonl", records)
        counts.setdefault(task, {})[split] = len(records)

    reuters = reuters_articles(raw)
    for split, keep in (("train", lambda k: k % VALIDATION_EVERY), ("validation", lambda k: not k % VALIDATION_EVERY)):
        chosen = [article for k, article in enumerate(reuters) if keep(k)]
        save("reuters", split, [{"id": r["id"], "text": r["text"], "label": r["label"]} for r in chosen])
        save("reuters_headlines", split, [{"id": r["id"], "instruction": HEADLINE_INSTRUCTION, "input": r["text"],
                                           "response": r["title"]} for r in chosen])
    articles = heldout_wikipedia(raw, wiki_articles)
    splits = {"train": [a for k, a in enumerate(articles) if k % VALIDATION_EVERY],
              "validation": [a for k, a in enumerate(articles) if not k % VALIDATION_EVERY]}
    zero_shot = []
    for split, chosen in splits.items():
        rng = random.Random(f"{seed}-{split}")
        items = next_sentence_items(chosen, rng)
        zero_shot += items
        save("next_sentence", split, items)
        save("wiki_continuation", split, continuation_pairs(chosen, rng))
        save("wiki_relatedness", split, relatedness_pairs(chosen, rng))
    save("zero_shot", "wiki_next_sentence", zero_shot)
    return counts
