"""Projects: a user's named workspaces, each later backed by containers."""
