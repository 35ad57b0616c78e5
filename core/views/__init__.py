"""Read models for the console: the night as its screens show it, read from the artifacts."""
