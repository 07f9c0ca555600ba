"""Networking pieces that know nothing of Tandem: sockets and the small HTTP server of the HA port."""
