"""The run folder's schema: the names and formats of what ``dualsae train`` writes.

    <run>/config.json           {"format": RUN_FORMAT, "train": TrainConfig.to_dict(), "data": {...},
                                 optional "calibration": {...}}; "train" holds the SAE fields under
                                 "sae" (flat beside the training fields in runs written before that)
    <run>/metrics.jsonl         one JSON object a line: step, epoch, lr, the loss terms and logs, time_s
    <run>/checkpoint/state.safetensors   weights, AdamW moments, counters; metadata step, format
                                 (removed when the run finishes)
    <run>/{image,text}/ or <run>/shared/   the trained SAE folder(s) (config.json + model.safetensors)
    <run>/summary.json          {"steps", "seconds", "final": last logs, optional "calibration"}: finished

The writer side is :mod:`dualsae.training.run_folder` and :mod:`dualsae.training.checkpoint`; the
reader side :mod:`dualsae.models.load`. Both take the names from here.
"""

from __future__ import annotations

RUN_FORMAT = "dualsae.run/1"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"
#: Folder of the shared SAE; the specific method writes one folder per modality instead.
SHARED_FOLDER = "shared"
MODALITY_FOLDERS = ("image", "text")

__all__ = ["CHECKPOINT_DIR", "CHECKPOINT_FILE", "CONFIG_FILE", "METRICS_FILE", "MODALITY_FOLDERS", "RUN_FORMAT",
           "SHARED_FOLDER", "SUMMARY_FILE"]
