"""The repository (casync.repo.repository.Repository: configuration, refs, commits, revisions, fsck) and
what is built directly on it: tags, the history of a path, repair, merge bases."""
