"""`callstream simulate`: replays realistic calls, with real speech, against a Callstream."""
