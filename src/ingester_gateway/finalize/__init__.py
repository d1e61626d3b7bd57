"""Finalize: a temporary file moves from its edit SE to an rw SE, as artStore defines it."""
