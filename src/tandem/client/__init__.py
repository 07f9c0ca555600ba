"""Failover HTTP client used by the `tandem api` CLI and by the AGS -> AMS feed.

    with Client("http://127.0.0.1:17100;http://127.0.0.1:17110", token) as c:
        c.get("/api/v1/projects")
"""

from tandem.client.http import Client, ClientError, HTTPStatusError, Unreachable, split_urls

__all__ = ["Client", "ClientError", "HTTPStatusError", "Unreachable", "split_urls"]
