"""Plumbing every layer uses: errors, atomic files, runtime settings, command-line helpers,
checkpoint files. Imports nothing else of the project."""
