"""Tools for the model: MCP servers (`mcp`), the call loop of a reply (`loop`) and
where tools are switched on (`control`)."""
