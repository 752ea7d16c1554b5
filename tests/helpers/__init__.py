"""Helpers shared by the tests: small data files, checkpoints and sample images."""
