"""Flows: the YAML graph of agents a job runs, parsed and checked before anything runs."""
