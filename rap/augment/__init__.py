"""Augmentations that create samples real logs lack: recovery and cross-agent views."""
