"""The casync command line: casync.cli.main (the group, global options, error handler) and one module per
command group, loaded when one of its commands runs."""
