"""Licenses: what a grant creates, and its life cycle."""
