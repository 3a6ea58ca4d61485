"""The gateway side of the agent protocol: bundling the agent, and talking to it."""
