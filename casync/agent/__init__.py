"""The sync agent: one process per site that serves its repository to peers and, on an interval,
syncs with its region's peers and pushes to its IPFS remotes."""
