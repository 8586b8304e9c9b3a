"""The working tree: scanning the disk, what is checked out, snapshot/status/checkout, edits (restore, rm)
and merging histories into the checked-out branch."""
