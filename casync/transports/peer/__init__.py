"""A casync peer: what both sides share (protocol), the serving side over a local repository
(service), the client's fetch / push procedures (exchange), the peer protocol over HTTP (http)
and its server, ``casync serve`` (server).  See docs/design.md, "Sync protocol"."""
