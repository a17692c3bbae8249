"""fbench methods plugins (registered through the fbench.methods entry-point group)."""
