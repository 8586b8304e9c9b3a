"""Merging as pure logic: conflict policies, the three-way tree merge and rename detection.  Conflicts are
values.  No I/O: what the histories say comes in as arguments (see casync.repo.mergebase)."""
