"""The HTTP layer: parses, calls one service function, renders."""
