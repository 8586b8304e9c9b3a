"""History as pure logic: vector and hybrid logical clocks, the commit graph (order, ancestry, merge bases)
and reachability labels.  No I/O."""
