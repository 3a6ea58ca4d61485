"""What spans a user's whole estate: deleting a project with everything in it, or an account."""

from cloudcontainer.accounts.removal import Removal

__all__ = ["Removal"]
