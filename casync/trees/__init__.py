"""Trees over any block store: UnixFS files and directories (write, read, build, diff) and the one
path-aligned tree walk every transfer and merge uses."""
