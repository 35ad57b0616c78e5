"""Watching the night: metrics samples, queue math (utilization, Erlang C), the status text,
the artifacts watcher and rate-limited logging.
"""
