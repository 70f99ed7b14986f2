"""Content-addressed artifact store over fsspec."""

from shipyard.artifacts.store import ArtifactStore, Blob, Manifest, StoredArtifact

__all__ = ["ArtifactStore", "Blob", "Manifest", "StoredArtifact"]
