"""The file API: workspace files through the agent, with HTTP semantics (ETags, MIME types)."""
