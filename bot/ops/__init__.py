"""Running the bot for months: health, metrics, logs, lifecycle."""
