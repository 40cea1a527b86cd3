"""The application layer: run configs, the model registry, run/resume/compare, reproductions, the CLI, plots.

Nothing in the library imports this package; it imports the library. See ARCHITECTURE.md.
"""
