"""The training-loss curve of a run and its plateau statistic: one recorder, one statistic, used by
both experiments (Figs. 5-6 of Sec. 6.1 and Table 1 of Sec. 6.2).

:class:`CurveRecorder` is the ``on_step`` callback of :func:`dualsae.training.trainer.train`: it keeps
the logged training-batch reconstruction loss of every step (the mean of the image and text terms
of eq. 4) and the dead-latent fraction.

:func:`plateau_change` is the plateau statistic ("the last 10% of steps change the reconstruction
loss by < 1%"): ``(mean over steps [0.8 T, 0.9 T) - mean over [0.9 T, T)) / mean over [0.9 T, T)``
of the per-step loss, T = all steps. Table 1's unit files store it as ``curve.last10_change``, the
synthetic units as ``plateau_change``. (Table 1 unit files written before this definition was shared
hold ``(E[0.9 T] - E[T]) / E[T]`` of epoch-mean losses instead; they still build the table.)
"""

from __future__ import annotations

import numpy as np

#: Points kept of each training-loss curve in a unit file.
CURVE_POINTS = 50


def plateau_change(curve: list[float]) -> float | None:
    """Relative change of the training reconstruction loss over the last 10% of steps.

    (mean over steps [0.8 T, 0.9 T) - mean over [0.9 T, T)) / mean over [0.9 T, T), from the
    per-step loss (each a mean over one batch; averaging 10% of the steps removes the batch noise).
    Positive: still falling. None when the run is too short to tell (fewer than 20 steps).
    """
    t = len(curve)
    if t < 20:
        return None
    before = float(np.mean(curve[int(0.8 * t):int(0.9 * t)]))
    last = float(np.mean(curve[int(0.9 * t):]))
    return (before - last) / last if last > 0 else None


def downsample(curve: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    """[[step, mean loss over the steps up to it], ...] at ``points`` evenly spaced steps."""
    t = len(curve)
    edges = np.linspace(0, t, min(points, t) + 1).astype(int)
    return [[int(b), round(float(np.mean(curve[a:b])), 6)] for a, b in zip(edges[:-1], edges[1:]) if b > a]


def epoch_means(curve: list[float], steps_per_epoch: int) -> list[float]:
    """[epochs] mean training loss of each epoch's steps (a partial last epoch is dropped)."""
    a = np.asarray(curve, dtype=np.float64)
    n = len(a) // steps_per_epoch
    return a[: n * steps_per_epoch].reshape(n, steps_per_epoch).mean(1).tolist()


class CurveRecorder:
    """``on_step`` callback of :func:`dualsae.training.trainer.train`: the per-step training loss
    (mean of the ``mse_*`` terms, eq. 4 per modality) and the logged dead-latent fraction."""

    def __init__(self) -> None:
        self.mse: list[float] = []
        self.dead: list[float] = []

    def __call__(self, step: int, logs: dict[str, float]) -> None:
        self.mse.append(float(np.mean([v for k, v in logs.items() if k.startswith("mse_")])))
        self.dead.append(float(logs.get("dead_frac", float("nan"))))

    @property
    def steps(self) -> int:
        return len(self.mse)

    def plateau_change(self) -> float | None:
        """:func:`plateau_change` of the recorded curve."""
        return plateau_change(self.mse)

    def downsampled(self, points: int = CURVE_POINTS) -> list[list[float]]:
        """:func:`downsample` of the recorded curve."""
        return downsample(self.mse, points)

    def summary(self, steps_per_epoch: int) -> dict:
        """The curve (per epoch and downsampled) and the plateau statistic, as Table 1's unit files hold them."""
        epochs = epoch_means(self.mse, steps_per_epoch)
        return {"steps": self.steps, "steps_per_epoch": steps_per_epoch, "epoch_mean_mse": [round(v, 6) for v in epochs],
                "train_curve": self.downsampled(), "final_dead_window_fraction": self.dead[-1] if self.dead else None,
                "last10_change": self.plateau_change(), "mse_final": epochs[-1] if epochs else None}


__all__ = ["CurveRecorder", "plateau_change", "downsample", "epoch_means", "CURVE_POINTS"]
