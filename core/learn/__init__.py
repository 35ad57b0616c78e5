"""The learn loop's files in the artifacts directory: training data, trainings, evaluations and
the adapter registry (the training itself is in ``pantheon.trainer``).
"""
