"""Headless OpenGL rasterizer of 3D primitives (no driving semantics)."""
