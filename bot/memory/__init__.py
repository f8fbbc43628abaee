"""Where conversations live: the Redis store and the embedded Redis server."""
