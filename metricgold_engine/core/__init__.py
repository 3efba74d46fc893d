"""The ground floor: pure Python and numpy, no torch, no Pillow, no bpy.

Blender's Python imports everything here (the extension vendors this package whole): the depth codec, camera
geometry, depth file I/O, the worker protocol and its client, the error family, and the option vocabularies.
``tests/test_core_floor.py`` imports every module of it in a process where importing torch or PIL fails.
"""
