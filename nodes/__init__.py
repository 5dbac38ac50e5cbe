"""ComfyUI nodes: thin adapters over streamdit_core (classic V1 node API).

``nodes/host.py`` will be the only module that touches ComfyUI services.
"""
