"""Each kind of remote: a casync peer over HTTP (casync serve) or a path, a bundle file, an IPFS node;
one lookup from a name, URL or path to its transport, and the remotes configuration."""
