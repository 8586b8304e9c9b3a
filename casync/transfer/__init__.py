"""Moving history between repositories, whatever the transport: the block stream (what the receiver
lacks, and how received blocks are checked) and the one clone procedure."""
