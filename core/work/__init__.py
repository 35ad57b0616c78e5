"""The work on a repository: git branches and worktrees, the tests and their sandbox, the
code-fix harness, the docs checks, the tool loop and its tools, discovery of a repository's
jobs, and the canaries planted to test the reviewers.
"""
