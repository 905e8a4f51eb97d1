"""Hosts that spawn and drive a llama-worker."""
