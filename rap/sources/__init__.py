"""Data sources: each converts one external format into rap.scene types."""
