"""Augmented dataset: sample types, sharded writer and readers."""
