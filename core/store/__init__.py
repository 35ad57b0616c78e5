"""What the night keeps on disk: the artifacts layout and the run records, atomic writes,
the job queue (SQLite), the operator's controls, submitting jobs, and the disk's free space.
"""
