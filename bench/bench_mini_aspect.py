"""Does videollm-mini see a frame-filling object in a wide (or tall) frame as it does in a square one?

For every shipped photo (matplotlib's and scikit-image's) the reference is the encoder's top class on the
photo's centre square. Each photo is then made into frames of other shapes, filling the frame (centre-cropped
to the shape, as footage is framed) or letterboxed (the whole photo, padded black), and we count how often
the reference class is among the classes mini reads from the frame (its top `tokens_per_frame`, 3), under
each way of combining views:

    python bench/bench_mini_aspect.py            # all schemes, all shapes
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

logger = logging.getLogger("bench_mini_aspect")
SHAPES = {"1:1": (360, 360), "4:3": (480, 360), "16:9": (640, 360), "21:9": (840, 360), "9:16": (360, 640)}
PHOTOS = {"grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
          **{n: ("skimage", f"data/{n}.png") for n in ("coffee", "chelsea", "astronaut", "motorcycle_left",
                                                       "motorcycle_right", "camera")},
          "rocket": ("skimage", "data/rocket.jpg")}
SCHEMES = ("mean of features (before)", "tiles, mean", "tiles, max", "tiles + whole, max", "tiles + whole, mean",
           "features of tiles + whole, mean")


def _photo(module: str, rel: str) -> np.ndarray:
    import importlib.util
    from pathlib import Path

    from PIL import Image

    root = Path(next(iter(importlib.util.find_spec(module).submodule_search_locations)))
    with Image.open(root / rel) as im:
        return np.asarray(im.convert("RGB"))


def _fit(img: np.ndarray, w: int, h: int, mode: str) -> np.ndarray:
    from PIL import Image

    ih, iw = img.shape[:2]
    if mode == "fill":  # crop to the shape, then resize: the object fills the frame
        scale = max(w / iw, h / ih)
        cw, ch = round(w / scale), round(h / scale)
        y, x = (ih - ch) // 2, (iw - cw) // 2
        return np.array(Image.fromarray(img[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR))
    scale = min(w / iw, h / ih)  # letterbox
    nw, nh = round(iw * scale), round(ih * scale)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = np.array(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return out


def _schemes(mini, frame: np.ndarray, k: int) -> dict[str, list[int]]:
    """Each scheme's top-k classes for one frame, from one pass over its views (tiles, then the whole frame)."""
    x = torch.from_numpy(np.ascontiguousarray(frame))[None]
    old = mini.config.whole_view
    mini.config.whole_view = True
    try:
        feats = mini.encode_frames(x)  # (1, 1, m, D): tiles, then the whole frame when m > 1
    finally:
        mini.config.whole_view = old
    tiles = feats[:, :, :-1] if feats.shape[2] > 1 else feats
    clf = mini.encoder.get_classifier()
    with torch.inference_mode():
        per_view = clf(feats[0, 0]).float().softmax(-1)  # (m, C)
        per_tile = per_view[: tiles.shape[2]]
        out = {"mean of features (before)": clf(tiles[0, 0].mean(0, keepdim=True)).float().softmax(-1)[0],
               "tiles, mean": per_tile.mean(0), "tiles, max": per_tile.amax(0), "tiles + whole, max": per_view.amax(0),
               "tiles + whole, mean": per_view.mean(0),
               "features of tiles + whole, mean": clf(feats[0, 0].mean(0, keepdim=True)).float().softmax(-1)[0]}
    return {name: p.topk(k).indices.tolist() for name, p in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["fill", "letterbox"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from videollm.backbones import load_backbone

    mini = load_backbone("videollm-mini", device="cpu")
    k = mini.config.tokens_per_frame
    photos = {n: _photo(*v) for n, v in PHOTOS.items()}
    ref = {n: _schemes(mini, _fit(p, 224, 224, "fill"), 1)[SCHEMES[0]][0] for n, p in photos.items()}
    logger.info("reference (centre square): %s", {n: mini.class_names[c] for n, c in ref.items()})
    hits = {(s, m, shape): 0 for s in SCHEMES for m in args.modes for shape in SHAPES}
    for mode in args.modes:
        for shape, (w, h) in SHAPES.items():
            for n, p in photos.items():
                for scheme, top in _schemes(mini, _fit(p, w, h, mode), k).items():
                    hits[scheme, mode, shape] += ref[n] in top
                    if ref[n] not in top:
                        logger.info("miss: %s %s %s %s → %s", scheme, mode, shape, n,
                                    [mini.class_names[c] for c in top])
    print("| scheme | fit | " + " | ".join(SHAPES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in SHAPES) + " |")
    for scheme in SCHEMES:
        for mode in args.modes:
            print(f"| {scheme} | {mode} | " + " | ".join(f"{hits[scheme, mode, s]}/{len(photos)}" for s in SHAPES)
                  + " |")


if __name__ == "__main__":
    main()
