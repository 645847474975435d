"""Developer tools: build the pinned ComfyUI environment and launch pools of real local servers."""
