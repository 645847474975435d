"""Browser tier: JupyterLab in headless Chromium, driven by Playwright, against real ComfyUI servers."""
