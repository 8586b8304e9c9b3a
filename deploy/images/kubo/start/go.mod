module casync.invalid/deploy/images/kubo/start

go 1.22
