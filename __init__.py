"""ComfyUI-StreamDiT: ComfyUI entry point (the V3 schema: ``comfy_entrypoint``).

ComfyUI imports this package from ``custom_nodes/``, reads ``WEB_DIRECTORY`` and calls
``comfy_entrypoint()`` for the extension (the node list; the models folder and the live routes
are registered then). The node classes live in ``nodes/``; the torch library they wrap is
``streamdit_core/``; the canvas extension (live player, live prompt box) is ``web/``.
"""

import os
import sys

# The nodes import the library as ``streamdit_core``; ComfyUI imports this folder as a package
# without putting it on the path. Appended, not prepended: nothing of ComfyUI's is shadowed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """The pack's ComfyExtension (ComfyUI awaits this once, when it loads the folder); the models
    folder and the live routes are registered with the host here."""
    from .nodes import StreamDiTExtension, setup_host

    setup_host()
    return StreamDiTExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
