"""Storage backends: the contracts (:mod:`casync.store.base`), the embedded pack+LMDB
store, the in-memory store, and (separately) the IPFS adapter."""
