"""Former home of post-hoc alignment, now split (issue 16): kept only so that imports of
``dualsae.alignment.post_hoc`` outside alignment/ keep working until they are updated. New code
imports from the modules below; this file is to be deleted once nothing imports it.

* eq. 5: :mod:`dualsae.alignment.correlation`; eq. 6: :mod:`dualsae.alignment.assignment`;
  eq. 7: :mod:`dualsae.alignment.permutation`; App. F.2: :mod:`dualsae.alignment.collapse`;
  the pipeline: :mod:`dualsae.alignment.align`.
"""

from dualsae.alignment.align import AlignmentResult, align
from dualsae.alignment.assignment import (
    SOLVERS,
    Matching,
    match_latents,
    solve_assignment,
)
from dualsae.alignment.collapse import COLLAPSE_FORMAT, collapse_report
from dualsae.alignment.correlation import (
    CORRELATION_FORMAT,
    CoactivationStats,
    coactivation_correlation,
    load_correlation,
)
from dualsae.alignment.permutation import build_permutation, permute_sae
from dualsae.models.aligned import AlignedPair

__all__ = [
    "COLLAPSE_FORMAT", "CORRELATION_FORMAT", "SOLVERS", "AlignedPair", "AlignmentResult", "CoactivationStats",
    "Matching", "align", "build_permutation", "coactivation_correlation", "collapse_report", "load_correlation",
    "match_latents", "permute_sae", "solve_assignment",
]
