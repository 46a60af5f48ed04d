"""What the PeerAuthentication mesh tests share: the control plane's API with the token, and
declaring exactly a set of PeerAuthentications, returning once every sidecar runs them."""

from __future__ import annotations

from typing import Any

import yaml

from tests.helpers_mesh import http_json


class DeclaresPeerAuthentications:
    """Mixed into a test mesh that has ``cp`` (a started control plane) and ``revision``."""

    cp: Any
    revision: int

    def api(self, path: str, method: str = "GET", body: str | None = None) -> tuple[int, object]:
        return http_json(self.cp.info["api"] + path, method, body, token=self.cp.info["token"],
                         content_type="application/yaml", timeout=40.0)

    def declare(self, *docs: str) -> None:
        """Replace the PeerAuthentications by ``docs``; returns once every sidecar runs that."""
        if docs:
            status, body = self.api("/api/v1/apply", "POST", "".join(docs))
            assert status == 200, body
            assert isinstance(body, dict)
            self.revision = max(self.revision, *(int(r["resourceVersion"])
                                                 for r in body["results"]))
        wanted = {d["metadata"]["name"] for d in yaml.safe_load_all("".join(docs)) if d}
        status, listed = self.api("/api/v1/peerauthentications")
        assert status == 200 and isinstance(listed, dict), listed
        for item in listed["items"]:
            name = item["metadata"]["name"]
            if name not in wanted:
                status, gone = self.api(
                    f"/api/v1/namespaces/default/peerauthentications/{name}", "DELETE")
                assert status == 200 and isinstance(gone, dict), gone
                self.revision = max(self.revision, int(gone["metadata"]["resourceVersion"]))
        status, synced = self.api(f"/api/v1/sync?storeVersion={self.revision}&timeout=30")
        assert status == 200 and isinstance(synced, dict) and synced["synced"], synced
