"""Labelled accuracy benchmark of the profile-match scanner (handles, pictures, real names).

Builds the sandbox platform (ego-Facebook, seed given by --seed), derives labelled pairs and
prints precision / recall per edit type for: exact matching, v1 (NFKC) matching, the v2 scanner,
and for pictures imagehash's pHash (64 bits, its own calibrated radius). With --calibrate it
chooses the thresholds on this seed (handles: the highest recall on the recognisable edits at
pooled precision >= 0.99; pictures: the largest radius whose audit precision is >= 0.999);
without it the library defaults are evaluated (use another seed for a held-out check).

Labelled sets (see docs/scanner.md):
- handle positives: every app profile whose handle copies its provider nickname, by recorded
  edit; plus synthetic ``confusable`` (Latin letters -> Cyrillic/Greek look-alikes) and ``pinyin``
  (hanzi nickname -> its pinyin spelling) copies of provider nicknames;
- handle negatives: app profiles with an unrelated handle (``user_input``) against their own
  provider nickname, and *hard negatives*: each provider nickname against the most similar
  nickname of another subject (identical match keys excluded: indistinguishable by design);
- picture positives: app pictures copied with each recorded edit; plus synthetic ``brightness``
  (x1.25) and ``small_crop`` (6 % off each side) of provider pictures;
- picture negatives: every app picture against every provider picture of another subject (the
  audit shape: all pairs), and user-uploaded pictures against their own provider picture.

Run: .venv/bin/python bench/scan_labelled.py [--seed 7] [--calibrate] [--skip-pictures]
"""

from __future__ import annotations

import argparse
import io
import time
from collections import defaultdict
from pathlib import Path

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image, ImageEnhance
from pypinyin import lazy_pinyin

from provguard.adapters.graph_files import read_edge_list
from provguard.sandbox import build_platform
from provguard.similarity.handles import MATCH_STEPS, normalize_handles
from provguard.similarity.match import (
    CALIBRATED,
    HandleThresholds,
    decide_handles,
    handle_features,
)
from provguard.similarity.names import MIN_LLR, chinese_name_score, detect_real_name
from provguard.similarity.pictures import (
    chroma_distance,
    hash_picture_table,
    min_dihedral_distance,
)
from provguard.similarity.scan import PICTURE_MAX_CHROMA, PICTURE_QUALITY_MIN, PICTURE_RADIUS

GRAPH = Path(__file__).resolve().parents[1] / "data" / "graphs" / "snap-ego-facebook.txt"
RECOGNISABLE = (
    "exact", "fullwidth", "emoji", "traditional", "suffix", "decoration", "case", "confusable",
    "pinyin",
)  # fmt: skip
PICTURE_TARGETS = ("resize", "recompress", "mirror", "square_crop")
V2_RULE = HandleThresholds(min_similarity=0.96)  # the thresholds before issue 6's rules
CONFUSE = str.maketrans({"a": "а", "e": "е", "o": "о", "p": "р", "c": "с", "x": "х", "i": "і"})


def _pr(tp: int, fp: int, fn: int) -> tuple[float, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return p, r


def handle_pairs(platform: object) -> tuple[list[str], list[str], list[str]]:
    """(app, provider, label) where label is an edit name or ``neg_*``."""
    app = platform.app_profiles  # type: ignore[attr-defined]
    prov = platform.provider_profiles  # type: ignore[attr-defined]
    nick = dict(
        zip(
            prov.column("subject_id").to_pylist(), prov.column("nickname").to_pylist(), strict=False
        )
    )
    a: list[str] = []
    b: list[str] = []
    lab: list[str] = []
    for sid, handle, edit in zip(
        app.column("subject_id").to_pylist(),
        app.column("handle").to_pylist(),
        app.column("handle_edit").to_pylist(),
        strict=True,
    ):
        if sid in nick:
            a.append(handle)
            b.append(nick[sid])
            lab.append(edit if edit != "user_input" else "neg_unrelated")
    rng = np.random.default_rng(0)
    nicks = list(nick.values())
    for n in nicks:
        if any(ch.isascii() and ch.isalpha() for ch in n):
            c = n.lower().translate(CONFUSE)
            if c != n.lower():
                a.append(c)
                b.append(n)
                lab.append("confusable")
        if any("\u4e00" <= ch <= "\u9fff" for ch in n) and rng.random() < 0.5:
            a.append("".join(w.capitalize() for w in lazy_pinyin(n)))
            b.append(n)
            lab.append("pinyin")
    # hard negatives: most similar other nickname (raw, casefolded), identical keys excluded
    from rapidfuzz import process
    from rapidfuzz.distance import Indel

    keys = normalize_handles(nicks, MATCH_STEPS).to_pylist()
    sim = process.cdist(
        keys, keys, scorer=Indel.normalized_similarity, workers=-1, dtype=np.float32
    )
    np.fill_diagonal(sim, -1.0)
    karr = np.asarray(keys, dtype=object)
    for i in range(len(nicks)):
        row = sim[i]
        row[karr == karr[i]] = -1.0
        j = int(np.argmax(row))
        a.append(nicks[j])
        b.append(nicks[i])
        lab.append("neg_hard")
    return a, b, lab


def eval_handles(a: list[str], b: list[str], lab: list[str], calibrate: bool) -> HandleThresholds:
    labels = np.asarray(lab)
    pos = ~np.char.startswith(labels.astype(str), "neg_")
    recog = np.isin(labels, RECOGNISABLE)
    exact = np.asarray([x == y for x, y in zip(a, b, strict=True)])
    v1 = np.asarray(
        [
            x == y and x != ""
            for x, y in zip(
                normalize_handles(a).to_pylist(), normalize_handles(b).to_pylist(), strict=True
            )
        ]
    )
    chosen = CALIBRATED
    feats = handle_features(a, b)
    if calibrate:
        # most conservative options first; a later option must be strictly better (recall on
        # the recognisable edits, then pooled precision) to be chosen
        best: tuple[float, float, HandleThresholds] | None = None
        grid = [
            (dg, af, mb, wr, mc, mx)
            for dg in (0, 2, 3, 4, 5)
            for af in (False, True)
            for mb in (4, 3, 2, 1)
            for wr in (0, 1, 2)
            for mc in (0, 3)
            for mx in (0, 2)
        ]
        for dg, af, mb, wr, mc, mx in grid:
            for ms in np.arange(0.70, 1.001, 0.01):
                th = HandleThresholds(
                    min_similarity=float(round(ms, 2)),
                    min_contained=mc,
                    max_extra=mx,
                    max_suffix_digits=dg,
                    suffix_affix=af,
                    min_suffix_base=mb,
                    max_wrap=wr,
                )
                m = decide_handles(feats, th).match
                p, _ = _pr(int((m & pos).sum()), int((m & ~pos).sum()), 0)
                r = float((m & recog).sum() / recog.sum())
                if p >= 0.99 and (best is None or (r, p) > (best[0], best[1])):
                    best = (r, p, th)
        assert best is not None
        chosen = best[2]
        print(
            f"calibrated handle thresholds: {chosen} (recall {best[0]:.4f}, precision {best[1]:.4f})"
        )
        if chosen != CALIBRATED:
            print(f"NOTE: differs from the library default {CALIBRATED}")
    v3 = decide_handles(feats, chosen).match
    v2 = decide_handles(feats, V2_RULE).match
    print(
        "\n| handle edit | pairs | exact R | v1 NFKC R | v2 R (no suffix/wrap rules) | "
        "v3 R (calibrated) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for e in sorted(set(lab)):
        sel = labels == e
        if e.startswith("neg_"):
            continue
        print(
            f"| {e} | {sel.sum()} | {exact[sel].mean():.3f} | {v1[sel].mean():.3f} | "
            f"{v2[sel].mean():.3f} | {v3[sel].mean():.3f} |"
        )
    print("\n| negatives | pairs | exact FP | v1 FP | v2 FP | v3 FP |")
    print("|---|---:|---:|---:|---:|---:|")
    for e in ("neg_unrelated", "neg_hard"):
        sel = labels == e
        print(
            f"| {e} | {sel.sum()} | {exact[sel].sum()} | {v1[sel].sum()} | {v2[sel].sum()} | "
            f"{v3[sel].sum()} |"
        )
    print("\n| method | precision | recall (recognisable edits) | least recall of an edit |")
    print("|---|---:|---:|---:|")
    for name, m in (("exact", exact), ("v1 NFKC", v1), ("v2 scanner", v2), ("v3 scanner", v3)):
        p, _ = _pr(int((m & pos).sum()), int((m & ~pos).sum()), 0)
        least = min(float(m[labels == e].mean()) for e in RECOGNISABLE if (labels == e).any())
        print(f"| {name} | {p:.4f} | {(m & recog).sum() / recog.sum():.4f} | {least:.3f} |")
    return chosen


def _bright(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    ImageEnhance.Brightness(img).enhance(1.25).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _small_crop(img: Image.Image) -> bytes:
    w, h = img.size
    dx, dy = round(w * 0.06), round(h * 0.06)
    buf = io.BytesIO()
    img.crop((dx, dy, w - dx, h - dy)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def eval_pictures(platform: object, calibrate: bool) -> int:
    pics = platform.pictures  # type: ignore[attr-defined]
    app = platform.app_profiles  # type: ignore[attr-defined]
    prov = platform.provider_profiles  # type: ignore[attr-defined]
    t = time.perf_counter()
    table = hash_picture_table(pics)
    dt = time.perf_counter() - t
    print(
        f"\nhashed {table.num_rows} pictures (centre square, 8 dihedral) in {dt:.1f} s: "
        f"{table.num_rows / dt:.0f} images/s (1 core)"
    )
    data = dict(
        zip(pics.column("avatar_key").to_pylist(), pics.column("data").to_pylist(), strict=False)
    )
    # synthetic edits of provider pictures
    extra_keys: list[str] = []
    extra_data: list[bytes] = []
    extra_rows: list[tuple[int, str, str]] = []
    for sid, key in zip(
        prov.column("subject_id").to_pylist(), prov.column("avatar_key").to_pylist(), strict=False
    ):
        img = Image.open(io.BytesIO(data[key])).convert("RGB")
        for name, fn in (("brightness", _bright), ("small_crop", _small_crop)):
            k = f"synthetic/{name}/{sid}"
            extra_keys.append(k)
            extra_data.append(fn(img))
            extra_rows.append((sid, k, name))
    table = pa.concat_tables(
        [table, hash_picture_table(pa.table({"avatar_key": extra_keys, "data": extra_data}))]
    )
    data.update(zip(extra_keys, extra_data, strict=False))
    row_of = {k: i for i, k in enumerate(table.column("avatar_key").to_pylist())}
    dih = np.frombuffer(b"".join(table.column("dihedral").to_pylist()), np.uint8).reshape(-1, 8, 32)
    quality = np.asarray(table.column("quality").to_numpy())
    # pHash (imagehash) of every picture, 64 bits
    ph = np.zeros((table.num_rows, 8), np.uint8)
    for k, i in row_of.items():
        h = imagehash.phash(Image.open(io.BytesIO(data[k])).convert("RGB"))
        ph[i] = np.packbits(h.hash.flatten())
    prov_key = dict(
        zip(
            prov.column("subject_id").to_pylist(),
            prov.column("avatar_key").to_pylist(),
            strict=False,
        )
    )
    q_keys: list[str] = []
    q_sub: list[int] = []
    q_lab: list[str] = []
    for sid, key, edit in zip(
        app.column("subject_id").to_pylist(),
        app.column("avatar_key").to_pylist(),
        app.column("avatar_edit").to_pylist(),
        strict=True,
    ):
        if sid in prov_key:
            q_keys.append(key)
            q_sub.append(sid)
            q_lab.append(edit if edit != "user_input" else "neg_unrelated")
    for sid, k, name in extra_rows:
        q_keys.append(k)
        q_sub.append(sid)
        q_lab.append(name)
    qi = np.asarray([row_of[k] for k in q_keys])
    bi = np.asarray([row_of[prov_key[s]] for s in q_sub])
    labels = np.asarray(q_lab)
    pos = labels != "neg_unrelated"
    d_pdq = min_dihedral_distance(dih[qi, 0], dih[bi])
    d_pdq_plain = (np.unpackbits(dih[qi, 0] ^ dih[bi, 0], axis=1)).sum(1)
    d_ph = np.unpackbits(ph[qi] ^ ph[bi], axis=1).sum(1)
    # audit: every query picture against every provider picture (all pairs within radius)
    prov_rows = np.asarray([row_of[prov_key[s]] for s in prov_key])
    prov_sub = np.asarray(list(prov_key))
    qsub = np.asarray(q_sub)
    chroma = np.asarray(table.column("chroma").to_pylist(), dtype=np.float64)
    c_pair = chroma_distance(chroma[qi], chroma[bi])
    # audit: least dihedral distance of every query picture to every provider picture, and
    # their chromaticity distance (the all-pairs shape, exact; computed once, thresholded below)
    words = np.ascontiguousarray(dih).view(np.uint64)  # (K, 8, 4)
    prov_words = words[prov_rows]
    cross = np.zeros((len(qi), len(prov_rows)), np.int16)
    c_cross = np.zeros((len(qi), len(prov_rows)), np.float32)
    for s in range(0, len(qi), 256):
        qw = words[qi[s : s + 256], 0]
        cross[s : s + 256] = np.bitwise_count(prov_words[None] ^ qw[:, None, None, :]).sum(3).min(2)
        c_cross[s : s + 256] = chroma_distance(
            chroma[qi[s : s + 256], None, :], chroma[prov_rows][None]
        )
    other = prov_sub[None, :] != qsub[:, None]

    def rule(radius: int, qmin: int, cmax: float) -> tuple[np.ndarray, int, float]:
        """(matches of the labelled pairs, audit false pairs, precision)."""
        okq, okb, okp = quality[qi] >= qmin, quality[bi] >= qmin, quality[prov_rows] >= qmin
        m = okq & okb & (d_pdq <= radius) & (c_pair <= cmax)
        fp_cross = int(
            ((cross <= radius) & (c_cross <= cmax) & other & okq[:, None] & okp[None, :]).sum()
        )
        tp, fp_own = int((m & pos).sum()), int((m & ~pos).sum())
        return m, fp_cross, tp / max(1, tp + fp_own + fp_cross)

    def ph_audit(radius: int) -> int:
        a_bits = np.unpackbits(ph[qi], axis=1).astype(np.int32)
        b_bits = np.unpackbits(ph[prov_rows], axis=1).astype(np.int32)
        # distance via dot products on {0,1}: popcount(x^y) = |x| + |y| - 2 x.y
        d = a_bits.sum(1)[:, None] + b_bits.sum(1)[None, :] - 2 * (a_bits @ b_bits.T)
        return int((other & (d <= radius)).sum())

    radius, qmin, cmax = PICTURE_RADIUS, PICTURE_QUALITY_MIN, PICTURE_MAX_CHROMA
    if calibrate:
        best: tuple[float, float, int, int, float] | None = None
        for q_try in (0, 10, 20, 30, 40, 50):
            for c_try in (0.01, 0.02, 0.03, 0.05, 0.1, 2.0):
                for r in range(8, 80, 2):
                    m, _, p = rule(r, q_try, c_try)
                    if p < 0.999:
                        break
                    least = round(min(float(m[labels == e].mean()) for e in PICTURE_TARGETS), 3)
                    if best is None or (least, p) > (best[0], best[1]):
                        best = (least, p, r, q_try, c_try)
        assert best is not None
        _, _, radius, qmin, cmax = best
        print(
            f"calibrated picture rule: radius {radius} bits, quality >= {qmin}, chroma L1 <= "
            f"{cmax} (best least recall over {', '.join(PICTURE_TARGETS)} at precision >= 0.999)"
        )
    ph_radius = 0
    for r in range(0, 32):
        tp = int((pos & (d_ph <= r)).sum())
        fp = int((~pos & (d_ph <= r)).sum()) + ph_audit(r)
        if tp / max(1, tp + fp) >= 0.999:
            ph_radius = r
        else:
            break
    ok50 = (quality[qi] >= 50) & (quality[bi] >= 50)
    v3, fp_cross, prec = rule(radius, qmin, cmax)
    pdq_only, _, prec_pdq_only = rule(24, 50, 2.0)
    print(
        f"\nv3 rule: PDQ of the 64x64 Lanczos square, radius {radius}, quality >= {qmin}, chroma "
        f"L1 <= {cmax}; pHash radius {ph_radius} of 64 (largest with audit precision >= 0.999)"
    )
    print(
        "\n| picture edit | pairs | exact-hash R | PDQ plain R (r 24) | PDQ r 24, q >= 50 R | "
        "v3 R | pHash R |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for e in sorted(set(q_lab)):
        if e.startswith("neg_"):
            continue
        sel = labels == e
        print(
            f"| {e} | {sel.sum()} | {(d_pdq_plain[sel] == 0).mean():.3f} | "
            f"{(d_pdq_plain[sel] <= 24).mean():.3f} | {(pdq_only & ok50)[sel].mean():.3f} | "
            f"{v3[sel].mean():.3f} | {(d_ph[sel] <= ph_radius).mean():.3f} |"
        )
    tp = int((v3 & pos).sum())
    fp_own = int((v3 & ~pos).sum())
    print(
        f"\n| v3 | TP {tp} | FP own-copy {fp_own} | FP audit (other subjects) {fp_cross} | "
        f"precision {prec:.4f} | quality-gated {int((quality[qi] < qmin).sum())} |"
    )
    print(f"| PDQ r 24, no gates | precision {prec_pdq_only:.4f} |")
    tp_ph = int((pos & (d_ph <= ph_radius)).sum())
    fp_ph = int((~pos & (d_ph <= ph_radius)).sum()) + ph_audit(ph_radius)
    print(
        f"| pHash | TP {tp_ph} | FP (own + audit) {fp_ph} | precision {tp_ph / max(1, tp_ph + fp_ph):.4f} |"
    )
    return radius


def eval_names(platform: object, calibrate: bool) -> None:
    app = platform.app_profiles  # type: ignore[attr-defined]
    subj = platform.subjects  # type: ignore[attr-defined]
    real = dict(
        zip(
            subj.column("subject_id").to_pylist(),
            subj.column("real_name").to_pylist(),
            strict=False,
        )
    )
    handles = app.column("handle").to_pylist()
    truth = np.asarray(app.column("handle_is_real_name").to_pylist())
    sids = app.column("subject_id").to_pylist()
    verified = np.asarray(
        [detect_real_name(h, real[s]).is_name for h, s in zip(handles, sids, strict=True)]
    )
    scores = [chinese_name_score(h) for h in handles]
    best_t = MIN_LLR
    if calibrate:
        best = (-1.0, 0.0)
        for t in np.arange(0.0, 12.01, 0.25):
            pred = np.asarray([detect_real_name(h, min_llr=float(t)).is_name for h in handles])
            p, r = _pr(
                int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
            )
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            if f1 > best[0]:
                best, best_t = (f1, float(t)), float(t)
        print(f"\ncalibrated Chinese name threshold min_llr = {best_t} (best F1)")
    pred = np.asarray([detect_real_name(h, min_llr=best_t).is_name for h in handles])
    print("\n| real-name test | precision | recall |")
    print("|---|---:|---:|")
    for name, m in (
        ("verified name (platform knows it)", verified),
        (f"name-likeness (LLR >= {best_t})", pred),
    ):
        p, r = _pr(int((m & truth).sum()), int((m & ~truth).sum()), int((~m & truth).sum()))
        print(f"| {name} | {p:.4f} | {r:.4f} |")
    del scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--skip-pictures", action="store_true", help="handles and names only")
    args = ap.parse_args()
    t = time.perf_counter()
    platform = build_platform(read_edge_list(GRAPH), seed=args.seed)
    print(f"sandbox seed {args.seed}: built in {time.perf_counter() - t:.1f} s")
    a, b, lab = handle_pairs(platform)
    counts: dict[str, int] = defaultdict(int)
    for x in lab:
        counts[x] += 1
    print("handle pairs:", dict(sorted(counts.items())))
    eval_handles(a, b, lab, args.calibrate)
    eval_names(platform, args.calibrate)
    if not args.skip_pictures:
        eval_pictures(platform, args.calibrate)


if __name__ == "__main__":
    main()
