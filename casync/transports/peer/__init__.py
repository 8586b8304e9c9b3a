"""A casync peer: the peer protocol over HTTP (http), the fetch / push exchange between two
repositories (exchange) and its server, ``casync serve`` (server).  See docs/design.md, "Sync protocol"."""
