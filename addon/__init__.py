"""stylerig Blender extension. Importable without bpy (the engine server shares addon.protocol)."""
