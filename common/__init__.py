"""Helpers every layer uses (data, train, launch): where the configs are, atomic writes, Hydra composition,
number formatting and running a command with its output copied to a log. Imports nothing of the project."""
