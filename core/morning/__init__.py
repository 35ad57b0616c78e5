"""The morning: the operator's review of the night's changes, and the report (summary.json and
report.html).
"""
