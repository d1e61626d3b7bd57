"""The reference artStore-compatible Storage Element shipped with the gateway."""
