"""tunestack stage."""
