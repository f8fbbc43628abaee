"""Getting replies into Discord: rate budget, renderer, splitter, message gate."""
