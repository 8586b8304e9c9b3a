"""Hostile objects and a hostile peer, for the tests that attack casync's entry points."""
