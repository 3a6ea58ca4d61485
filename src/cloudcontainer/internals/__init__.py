"""The private internals of libraries that the gateway's hot paths reach into, one module per
library (`uvicorn`, `websockets`, `fastapi`, which covers the Starlette it ships with).

Nothing else in the gateway imports a library's private modules or touches its private
attributes: what a library upgrade can break is here, each module names the private names it
uses and the versions they were verified on, and tests/test_internals.py checks that they
exist and behave as relied on, failing with a message that says what moved.
"""
