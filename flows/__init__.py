"""Flow definitions (YAML) and the demo corpus; data only."""
