"""Headless Blender helpers of the engine's environment (bpy as a Python module): building the add-on zip,
rendering a .blend through the engine (`stylerig render-blend`) and the end-to-end demo (`stylerig demo`).

bpy is imported only inside the functions that need it, so `stylerig --help` stays fast and works without it.
"""
