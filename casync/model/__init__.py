"""The pure data model: the codecs of every block casync writes (CIDs and varints, DAG-CBOR, dag-pb/UnixFS
objects and commits, CAR archives), name and path validation, and chunking.  No I/O."""
