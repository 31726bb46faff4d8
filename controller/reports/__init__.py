"""A sweep's report: ``index.html`` with the results table, the verdicts and plots, the same
tables as ``report.md`` and CSV files (``farm report``, the nightly job; docs/reports.md).

Modules: ``data`` reads what the report shows, ``tables`` makes its tables, ``plots`` draws
its plots (matplotlib, Agg), ``sections`` puts them in the page's order, ``page`` builds the
HTML, ``writer`` writes the folder.
"""

from controller.reports.data import ReportError
from controller.reports.writer import FILES, write_report

__all__ = ["FILES", "ReportError", "write_report"]
