"""How retrieval, zero-shot and steering change when weak matches are left unmatched.

    nice -n 10 .venv/bin/python docs/emoji/match_threshold.py runs/emoji-spec --data ../shared/data/emoji --out docs/emoji

RUN is a `specific` training run. The correlation (eq. 5), the Hungarian matching (eq. 6) and the match
confidence (support, permutation null: 200 shuffles, q = 0.99) are computed once on the training split;
each threshold then drops the failing pairs (what `dualsae align --min-correlation/--min-support` does),
permutes the text SAE (eq. 7) and evaluates on the test split: retrieval (caption positives),
caption-prototype zero-shot over `category`, and concept steering over `category`.
Writes match-threshold.json and match-threshold.md into --out.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from dualsae.alignment.assignment import match_latents
from dualsae.alignment.confidence import ConfidenceOptions, encode_all, filter_matching, match_confidence
from dualsae.alignment.correlation import coactivation_correlation
from dualsae.alignment.permutation import build_permutation, permute_sae
from dualsae.evaluation.tasks import EvalOptions, evaluate
from dualsae.files.atomic import write_json, write_text
from dualsae.models.aligned import AlignedPair
from dualsae.models.load import load_model
from dualsae.store.paired import open_store

SETTINGS = [
    ("all matches (paper)", ConfidenceOptions()),
    ("c > null threshold", ConfidenceOptions(min_correlation="null")),
    ("support >= 5", ConfidenceOptions(min_support=5)),
    ("support >= 20", ConfidenceOptions(min_support=20)),
    ("c >= 0.1", ConfidenceOptions(min_correlation=0.1)),
    ("c >= 0.2", ConfidenceOptions(min_correlation=0.2)),
    ("c >= 0.3", ConfidenceOptions(min_correlation=0.3)),
    ("c >= 0.5", ConfidenceOptions(min_correlation=0.5)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    pair = load_model(args.run)
    store = open_store(args.data)
    train, test = store.split("train"), store.split("test")
    t0 = time.perf_counter()
    stats = coactivation_correlation(pair, train, progress=False)
    c, li, lt = stats.correlation()
    matching = match_latents(c, li, lt)
    codes_i, codes_t = encode_all(pair, train)
    conf = match_confidence(codes_i, codes_t, matching.image, matching.text, ConfidenceOptions())
    t_conf = time.perf_counter() - t0
    sae_i, sae_t = pair.sae_for("image"), pair.sae_for("text")
    opts = EvalOptions(tasks=("retrieval", "zeroshot", "steering"), positives="caption", label_field="category",
                       concept_field="category", progress=False)
    rows = []
    for label, options in SETTINGS:
        kept, kconf, dropped = filter_matching(matching, replace(conf, options=options))
        perm = build_permutation(kept, sae_i.m, sae_t.m)
        aligned = AlignedPair("aligned", sae_i, permute_sae(sae_t, perm), {"permutation": perm.tolist()})
        res = evaluate(aligned, test, opts, train_store=train)["tasks"]
        r = res["retrieval"]
        rows.append({
            "setting": label, "matched": len(kept.image), "dropped": dropped,
            "mean_matched_correlation": kept.mean_corr,
            "i2t_R@1": r["image_to_text"]["R@1"], "i2t_R@10": r["image_to_text"]["R@10"],
            "t2i_R@1": r["text_to_image"]["R@1"], "t2i_R@10": r["text_to_image"]["R@10"],
            "zeroshot_top1": res["zeroshot"]["top1"], "zeroshot_majority": res["zeroshot"]["majority_baseline"],
            "steering_map": res["steering"]["map"], "steering_mrr": res["steering"]["mrr"],
            "steering_map_unsteered": res["steering"]["map_unsteered"],
        })
        print(json.dumps(rows[-1]))
    sup = conf.support
    doc = {
        "run": args.run, "data": args.data, "train_rows": train.n, "test_rows": test.n,
        "live": {"image": len(matching.live_image), "text": len(matching.live_text)},
        "matched": len(matching.image), "confidence_seconds": round(t_conf, 1),
        "support_quantiles": {q: int(np.quantile(sup, q / 100, method="lower")) for q in (10, 25, 50, 75, 90)},
        "above_null": int((matching.corr > conf.null_threshold).sum()),
        "null_threshold_quantiles": {q: round(float(np.quantile(conf.null_threshold, q / 100)), 4) for q in (10, 50, 90)},
        "rows": rows,
    }
    out = Path(args.out)
    write_json(out / "match-threshold.json", doc)
    head = "| setting | matched | I→T R@1 | I→T R@10 | T→I R@1 | T→I R@10 | zero-shot top-1 | steering mAP | steering MRR |\n|---|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['setting']} | {r['matched']:,} | {100 * r['i2t_R@1']:.1f} | {100 * r['i2t_R@10']:.1f} | {100 * r['t2i_R@1']:.1f} | "
        f"{100 * r['t2i_R@10']:.1f} | {100 * r['zeroshot_top1']:.1f} | {r['steering_map']:.3f} | {r['steering_mrr']:.3f} |\n"
        for r in rows)
    write_text(out / "match-threshold-table.md", head + body)
    print(head + body)


if __name__ == "__main__":
    main()
