"""Bundled backends (registered through the `tgmux` entry-point group)."""
