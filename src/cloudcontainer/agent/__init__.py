"""The in-sandbox agent: the only thing that touches a sandbox's files and processes.

It runs inside every sandbox as the sandbox user, under any runtime, and serves one
multiplexed WebSocket (docs/agent-protocol.md). It must run on python3 >= 3.9 with only
the standard library, `websockets` and `inotify_simple`: the gateway ships it as a zipapp
(`agent.pyz`) mounted read-only into images that only need to provide python3. It never
imports the gateway.
"""

PROTOCOL_VERSION = 2
__version__ = "0.1.0"
