"""Running the night: the engine (claims jobs, runs them, renews leases), the runner (one job's
nodes in order), and the demo night's repository and code corpus.
"""
