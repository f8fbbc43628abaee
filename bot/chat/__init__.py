"""The chat engine: conversations, context building, personas and usage."""
