"""The HA pair: LockFile, states, heartbeat, isolation probe, replication.

Nothing here knows about APIs or HTTP routing: the server hands a controller
a `ServerOps` and the controller tells it when to serve.
"""
