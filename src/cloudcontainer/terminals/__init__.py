"""Terminals: PTY processes in the agent, attached to by WebSocket clients."""
