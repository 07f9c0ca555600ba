"""Tandem: self-hosted API management with highly-available active/passive pairs."""

__version__ = "0.1.0"
