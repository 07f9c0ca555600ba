"""Test support, shared by tests/ and bench/ (not part of the tandem package):

    harness.py  processes: `tandem server` through the CLI (Server, Home, CliCluster),
                the echo backend as a process, stop_process, wait_for, holds_for, free_port
    echo.py     the sample HTTP backend (in process: EchoServer; as a process: harness.echo_cmd)
    host.py     HostStandIn: the ServiceHost a client service runs in, without a server process
    ags.py      gateway helpers: documents, a scriptable config feed, raw HTTP clients, run_gateway
    ams.py      InProcessAms: the real AMS app on a real store, in the test process
"""
