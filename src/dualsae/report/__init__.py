"""Static HTML report of a model on a store: ``dualsae report`` (see :mod:`dualsae.report.build`)."""

from dualsae.report.build import ReportOptions, build_report

__all__ = ["ReportOptions", "build_report"]
