"""Peer-to-peer sync without IPFS: negotiation, block streams, HTTP ``serve`` and its
client, local-path peers and bundles.  See docs/design.md, "Sync protocol"."""
