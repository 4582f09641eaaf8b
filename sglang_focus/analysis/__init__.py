"""Studies of FOCUS on the bundled checkpoint."""
