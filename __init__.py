"""ComfyUI-StreamDiT: ComfyUI entry point.

ComfyUI imports this package from ``custom_nodes/`` and reads the three names below. The node
classes live in ``nodes/``; the torch library they wrap is ``streamdit_core/``; the canvas
extension (live player, live prompt box) is ``web/``.
"""

import os
import sys

# The nodes import the library as ``streamdit_core``; ComfyUI imports this folder as a package
# without putting it on the path. Appended, not prepended: nothing of ComfyUI's is shadowed.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

WEB_DIRECTORY = "./web"

if __package__:  # loaded by ComfyUI (as a package named after this folder)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, setup_host

    setup_host()
else:  # read as a lone file (a test collector walking the folder): nothing to register
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
