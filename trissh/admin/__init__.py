"""The operator's view of a running server: ``trissh sessions``, ``kill``, ``watch`` and
``drain`` through a local admin socket."""
