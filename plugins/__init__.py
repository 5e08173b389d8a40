"""Bundled plugins (registered through the `tgmux` entry-point group)."""
