"""Orchestration: wires the pure policy to the edges and runs the daemon's tasks."""
