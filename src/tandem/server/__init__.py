"""One server process: ports, lifecycle, supervisor."""
