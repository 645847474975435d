"""UI-format workflows (what the ComfyUI page saves) converted to the API format exactly as the page does when it
queues them; ``to_api`` is the entry point, the modules below it each handle one part of the page's rules."""

from comfy_notebook.core.ui.convert import to_api

__all__ = ["to_api"]
