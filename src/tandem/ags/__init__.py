"""The API Gateway Server's data plane (see docs/gateway.md)."""

from tandem.native import extend_path

# the hot path's compiled modules, when built and fresh (tandem/native.py, docs/native.md)
__path__ = extend_path(__path__, __name__)
