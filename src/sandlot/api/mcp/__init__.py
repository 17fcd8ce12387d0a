"""The MCP door: sandlot's tools for AI agents over streamable HTTP."""
