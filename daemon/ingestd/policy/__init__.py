"""Pure decisions: no I/O, no clock, no sockets; plain functions of their inputs."""
