"""The node's inference service: aiohttp + llama-cpp-python (see app.py for the map of modules)."""
__version__ = "0.1.0"
