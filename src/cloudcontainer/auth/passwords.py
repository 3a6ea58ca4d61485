"""Password hashing with argon2id, off the event loop."""

from __future__ import annotations

import anyio.to_thread
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

__all__ = ["PasswordHasher"]


class PasswordHasher:
    """Hashes and verifies passwords in a worker thread (argon2 is deliberately slow).

    `verify` with no stored hash still spends the time of one verification, so the response
    time of a login does not tell whether the account exists.
    """

    def __init__(self, *, time_cost: int, memory_cost_kib: int) -> None:
        self._hash = PasswordHash((Argon2Hasher(time_cost=time_cost, memory_cost=memory_cost_kib),))
        self._decoy = self._hash.hash("decoy password for constant-time misses")

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hash.hash, password)

    async def verify(self, password: str, stored: str | None) -> bool:
        if stored is None:
            await anyio.to_thread.run_sync(self._hash.verify, password, self._decoy)
            return False
        return await anyio.to_thread.run_sync(self._hash.verify, password, stored)
