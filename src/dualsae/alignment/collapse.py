"""The collapse diagnostic of a shared SAE (paper App. F.2): the same correlation C (eq. 5) and
assignment (eq. 6) as post-hoc alignment, and the share of live latents matched to themselves,
``P(i) = i``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualsae.alignment.assignment import Matching, matching_json

COLLAPSE_FORMAT = "dualsae.collapse/1"


def collapse_report(matching: Matching, m: int, confidence: Any = None) -> dict:
    """App. F.2: for a shared SAE, the share of live latents the Hungarian matching sends to themselves.

    The rate's denominator m~ is the number of *live* latents, a latent being dead when it never
    fires on any input of either modality (Sec. 4's definition); ``collapse_rate_of_matched`` divides
    by the number of matched pairs instead (the two agree when both modalities use the same latents).
    """
    collapsed = matching.image[matching.image == matching.text]
    live_either = np.union1d(matching.live_image, matching.live_text)
    live_both = np.intersect1d(matching.live_image, matching.live_text)
    corr_self = matching.corr[matching.image == matching.text]
    return {
        "format": COLLAPSE_FORMAT,
        "m": m,
        "live": {"image": len(matching.live_image), "text": len(matching.live_text),
                 "either": len(live_either), "both": len(live_both)},
        "matched": len(matching.image),
        "collapsed": len(collapsed),
        "collapse_rate": len(collapsed) / len(live_either) if len(live_either) else None,
        "collapse_rate_of_matched": len(collapsed) / len(matching.image) if len(matching.image) else None,
        "collapsed_latents": collapsed.tolist(),
        "collapsed_correlation": [round(float(x), 6) for x in corr_self],
        "mean_matched_correlation": matching.mean_corr,
        "mean_collapsed_correlation": float(corr_self.mean()) if len(corr_self) else None,
        "solver": matching.solver,
        "matching": matching_json(matching, confidence),
    }


__all__ = ["COLLAPSE_FORMAT", "collapse_report"]
