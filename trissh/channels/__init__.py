"""One handler per channel kind; each talks to its connection through
:class:`trissh.connection.channel.ChannelPort`, never the driver."""
