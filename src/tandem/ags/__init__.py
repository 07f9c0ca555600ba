"""The API Gateway Server's data plane (see docs/gateway.md)."""
