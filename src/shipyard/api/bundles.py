"""Edge bundles over REST: what devices poll (`GET .../bundles/{alias}`) and download.

The server signs with SHIPYARD_SIGNING_KEY or its home's `default` signing key
(security/signing.py); a bundle is built once per version, reference and key and
served from the home's cache after that (packaging/bundle.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from shipyard.api.models import version_ref
from shipyard.api.state import control_plane
from shipyard.config import Settings
from shipyard.packaging.bundle import BundleInfo, CachedBundle, bundle_for
from shipyard.security.signing import server_signer

router = APIRouter(prefix="/api", tags=["edge"])


def _bundle(request: Request, name: str, alias: str) -> CachedBundle:
    ref = version_ref(name, alias)
    return bundle_for(control_plane(request).registry, ref, lambda: server_signer(Settings()))


@router.get("/models/{name}/bundles/{alias}")
def bundle_info(request: Request, name: str, alias: str) -> BundleInfo:
    """The signed bundle for NAME@ALIAS (or a version number): digest, signature, key id
    and manifest; poll this, download only when the digest changed."""
    return _bundle(request, name, alias).info


@router.get(
    "/models/{name}/bundles/{alias}/download",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def download_bundle(request: Request, name: str, alias: str) -> FileResponse:
    """The bundle's zip (deterministic: the same version and key give the same bytes)."""
    cached = _bundle(request, name, alias)
    return FileResponse(
        cached.path,
        media_type="application/zip",
        filename=f"{name}-{cached.info.version}-{cached.info.digest[:12]}.zip",
        headers={"x-shipyard-bundle-digest": cached.info.digest},
    )
