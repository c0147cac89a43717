"""Mooncake's Python package namespace, provided by te-rs.

Only ``mooncake.engine`` (TransferEngine, TransferOpcode, TransferNotify) is
here; it runs on te-rs's Rust Transfer Engine.
"""
