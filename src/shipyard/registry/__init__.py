"""The model registry: models, immutable versions, aliases, tags, lineage."""
