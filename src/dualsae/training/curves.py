"""Training-loss curves of a run, as the experiments keep them, and the plateau statistics read from them.

Two statistics live here today (one per experiment); see each function."""

from __future__ import annotations
import numpy as np


class CurveRecorder:
    """``on_step`` callback of :func:`dualsae.training.trainer.train`: per-step training MSE, reduced per epoch."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.spe = steps_per_epoch
        self.mse: list[float] = []
        self.dead: list[float] = []

    def __call__(self, step: int, logs: dict[str, float]) -> None:
        terms = [v for k, v in logs.items() if k.startswith("mse_")]
        self.mse.append(float(np.mean(terms)))
        self.dead.append(float(logs.get("dead_frac", float("nan"))))

    def epoch_means(self) -> list[float]:
        """[epochs] mean training MSE of each epoch's steps."""
        a = np.asarray(self.mse, dtype=np.float64)
        n = len(a) // self.spe
        return a[: n * self.spe].reshape(n, self.spe).mean(1).tolist()

    def summary(self) -> dict:
        """The curve (per epoch) and the plateau statistic, as stored in the unit file."""
        epochs = self.epoch_means()
        return {"steps": len(self.mse), "steps_per_epoch": self.spe, "epoch_mean_mse": [round(v, 6) for v in epochs],
                "final_dead_window_fraction": self.dead[-1] if self.dead else None, **plateau(epochs)}


def plateau(epoch_mse: list[float]) -> dict:
    """``last10_change = (E[0.9 T] - E[T]) / E[T]`` from per-epoch mean MSE (see module docstring)."""
    n = len(epoch_mse)
    if n < 2:
        return {"last10_change": None, "mse_at_90pct": None, "mse_final": None}
    at90 = epoch_mse[max(0, min(n - 2, int(round(0.9 * n)) - 1))]
    final = epoch_mse[-1]
    return {"last10_change": (at90 - final) / final, "mse_at_90pct": at90, "mse_final": final}


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


def _downsample(curve: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    """[[step, mean loss over the steps up to it], ...] at ``points`` evenly spaced steps."""
    t = len(curve)
    edges = np.linspace(0, t, min(points, t) + 1).astype(int)
    return [[int(b), round(float(np.mean(curve[a:b])), 6)] for a, b in zip(edges[:-1], edges[1:]) if b > a]
