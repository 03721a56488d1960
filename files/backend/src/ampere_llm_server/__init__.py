"""The node's inference service."""
