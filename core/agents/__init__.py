"""Agents: the base class and the registry, and the built-in agents by kind (text checks, the
model's describe, and the work agents that write docs and code, review, test and merge).
"""
