"""The gateway's policies: one module per policy type, compiled per project into a `Chain`.

See `base.py` for what a step is and `chain.py` for the order they run in.
Each module registers its builder with `@builder("<type>")` when imported;
`_MODULES` lists them.
"""

from __future__ import annotations

import importlib

from tandem.ags.policies.base import Answer, Step
from tandem.ags.policies.chain import BUILDERS, Chain, Consumers, Services, compile_chain

_MODULES = ("api_key", "basic_auth", "ip_filter", "cors", "headers", "retry", "jwt", "rate_limit", "quota", "cache",
            "delivery")
for _name in _MODULES:
    importlib.import_module(f"tandem.ags.policies.{_name}")

__all__ = ["Answer", "BUILDERS", "Chain", "Consumers", "Services", "Step", "compile_chain"]
