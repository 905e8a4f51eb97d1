"""Placeholder demo until the host client lands: one streamed turn."""
