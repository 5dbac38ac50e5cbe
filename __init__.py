"""ComfyUI-StreamDiT: ComfyUI entry point.

ComfyUI imports this package from ``custom_nodes/`` and reads the three names below. The node
classes live in ``nodes/``; the torch library they wrap is ``streamdit_core/``.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
