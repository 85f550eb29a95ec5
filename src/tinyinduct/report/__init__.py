"""Self-contained HTML pages: `report.html` of a run (a slider over its evaluations) and
`compare.html` of a sweep. Each is one file with its data, script and style inline; it opens
offline by double-click."""

from .run_report import REPORT_FILE, run_report_data, write_run_report
from .sweep_page import COMPARE_FILE, sweep_report_data, write_sweep_report

__all__ = ["COMPARE_FILE", "REPORT_FILE", "run_report_data", "sweep_report_data",
           "write_run_report", "write_sweep_report"]
