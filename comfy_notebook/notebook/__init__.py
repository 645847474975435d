"""The notebook layer: ``%comfy`` / ``%%comfy`` magics, the status panel and progress widgets.

It only translates cells into ``comfy_notebook.api`` calls and engine state into widgets; no networking and no lock
logic live here. Import it through ``%load_ext comfy_notebook`` (IPython and ipywidgets are imported lazily).
"""
