"""Labels and concept agreement of every latent of a report (:mod:`dualsae.evaluation.caption_labels`):
the image side is the captions paired with the latent's top images, the text side its top captions,
each over the latent's first ``opt.captions`` top rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dualsae.evaluation.caption_labels import SideLabels, Vocabulary, agreement, side_labels
from dualsae.report.compute import ReportData
from dualsae.report.options import ReportOptions


@dataclass
class Concepts:
    """labels: per modality, the label words of each latent; agreement: [m] (NaN where undefined)."""

    labels: dict[str, SideLabels]
    agreement: np.ndarray

    def label_text(self, mod: str) -> list[str]:
        """[m] the label as one string ("" when no word is distinctive)."""
        return [" · ".join(w) for w in self.labels[mod].words]


def latent_concepts(d: ReportData, captions: list[Any], opt: ReportOptions) -> Concepts:
    """Labels of both sides of every latent and their agreement, from the report rows' captions [N]."""
    vocab = Vocabulary.of(captions)
    labels = {mod: side_labels(vocab, [r[: opt.captions] for r in d.stats[mod].top_rows], words=opt.label_words,
                               z_min=opt.label_z, prior=opt.label_prior) for mod in ("image", "text")}
    return Concepts(labels, agreement(labels["image"], labels["text"]))


__all__ = ["Concepts", "latent_concepts"]
