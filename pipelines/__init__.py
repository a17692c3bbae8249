"""fbench pipelines plugins (registered through the fbench.pipelines entry-point group)."""
