"""One SSH connection's trio side: the driver (reader and router), its writer and clock,
the channel streams handlers use, and the connection's container."""
