"""Authentication policy: who may log in, how, and with which restrictions."""
